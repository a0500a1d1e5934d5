package main

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/listenwatch/listenwatch/views"
	"github.com/rs/zerolog"
)

// owners names listener owners for the views from /proc and the pods.
func owners(proc procfs.FS, names *pods.Names) views.ProcessOwners {
	return views.ProcessOwners{
		Pods: names,
		Comm: func(pid uint32) string {
			if pid == 0 {
				return ""
			}
			b, err := os.ReadFile(proc.PID(pid, "comm"))
			if err != nil {
				return ""
			}
			return strings.TrimSpace(string(b))
		},
	}
}

// listenersAPI serves GET /api/v1/listeners: a views.Snapshot as JSON.
func listenersAPI(src views.Source, lat views.Latencies, own views.Owners, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		s, err := views.Build(src, lat, own, time.Now())
		if err != nil {
			log.Error().Err(err).Msg("api: cannot read listeners")
			http.Error(w, "cannot read listeners: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s)
	})
}
