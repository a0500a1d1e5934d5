package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"github.com/rs/zerolog"
)

// httpTimeouts bound what one client can hold: a slow or stalled client is
// cut off instead of keeping a goroutine and its buffers forever.
type httpTimeouts struct {
	readHeader, read, write, idle time.Duration
}

var defaultTimeouts = httpTimeouts{
	readHeader: 10 * time.Second,
	read:       30 * time.Second,
	// A scrape of a busy node takes well under a second; a client that
	// cannot take the answer in a minute is cut off.
	write: time.Minute,
	idle:  2 * time.Minute,
}

func newHTTPServer(h http.Handler, t httpTimeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    64 << 10,
	}
}

// serveHTTP serves srv on ln, with TLS and basic auth when configFile (the
// exporter-toolkit web configuration, as node_exporter's) asks for them.
func serveHTTP(ln net.Listener, srv *http.Server, configFile string, log zerolog.Logger) error {
	addrs := []string{ln.Addr().String()}
	systemd := false
	flags := &web.FlagConfig{WebListenAddresses: &addrs, WebSystemdSocket: &systemd, WebConfigFile: &configFile}
	return web.Serve(ln, srv, flags, slog.New(zerologHandler{log: log}))
}

// zerologHandler hands the toolkit's slog records to the process's one
// zerolog logger.
type zerologHandler struct {
	log   zerolog.Logger
	attrs []slog.Attr
}

func zerologLevel(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	case l >= slog.LevelInfo:
		return zerolog.InfoLevel
	}
	return zerolog.DebugLevel
}

func (h zerologHandler) Enabled(_ context.Context, l slog.Level) bool {
	return zerologLevel(l) >= h.log.GetLevel()
}

func (h zerologHandler) Handle(_ context.Context, r slog.Record) error {
	ev := h.log.WithLevel(zerologLevel(r.Level))
	for _, a := range h.attrs {
		ev = ev.Interface(a.Key, a.Value.Any())
	}
	r.Attrs(func(a slog.Attr) bool {
		ev = ev.Interface(a.Key, a.Value.Any())
		return true
	})
	ev.Msg(r.Message)
	return nil
}

func (h zerologHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return h
}

func (h zerologHandler) WithGroup(name string) slog.Handler {
	h.log = h.log.With().Str("group", name).Logger()
	return h
}
