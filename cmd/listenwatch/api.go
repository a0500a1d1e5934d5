package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/listenwatch/listenwatch/stream"
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

// eventsQueue is how many records an /api/v1/events reader may fall
// behind by; beyond it records are counted as lost, in its own stream.
const eventsQueue = 4096

// streamWriteTimeout bounds one write of the event stream: the server's
// WriteTimeout would end every stream after a minute.
const streamWriteTimeout = 30 * time.Second

// eventsAPI serves GET /api/v1/events: `listenwatch trace`'s events as
// JSON lines, with its filters as query parameters (stream.ParseFilter),
// and duration=D to end the stream after D with a last summary.
func eventsAPI(hub *stream.Hub, src stream.Listeners, own views.Owners, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query()
		ctx := r.Context()
		if d := q.Get("duration"); d != "" {
			dur, err := time.ParseDuration(d)
			if err != nil || dur <= 0 {
				http.Error(w, "duration="+d+": want a positive duration such as 30s", http.StatusBadRequest)
				return
			}
			q.Del("duration")
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, dur)
			defer cancel()
		}
		f, err := stream.ParseFilter(q)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sess, err := hub.Open(f, eventsQueue, src, own)
		if err != nil {
			log.Error().Err(err).Msg("api: cannot open an event stream")
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer sess.Close()
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc.Flush() // the client knows the stream has begun
		enc := json.NewEncoder(w)
		err = sess.Run(ctx, func(e *stream.Event) error {
			rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			if err := enc.Encode(e); err != nil {
				return err
			}
			return rc.Flush()
		})
		if err != nil && r.Context().Err() == nil {
			log.Info().Err(err).Str("client", r.RemoteAddr).Msg("api: event stream ended")
		}
	})
}
