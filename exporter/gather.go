package exporter

import (
	"compress/gzip"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/rs/zerolog"
)

// A node has thousands of listeners and each has about 18 series. Through
// a registry, a 10,000-listener scrape spent 1.7 s and 166 MB checking,
// sorting and converting series one by one, and the agent's RSS reached
// 195 MiB (make bench-scale). The collector's series are unique by
// construction (one per listener and label value), so /metrics writes
// them as exposition text directly (Handler); Collect writes the very
// same series, through the same collect, for registries and tests
// (TestHandlerIsCollect).

// sink receives the series of one collection.
type sink interface {
	value(d typedDesc, v float64, labels ...string)
	histogram(d histDesc, count uint64, sum float64, buckets map[float64]uint64, labels ...string)
}

// chanSink is Collect's: const metrics on the registry's channel.
type chanSink struct{ ch chan<- prometheus.Metric }

func (s chanSink) value(d typedDesc, v float64, labels ...string) {
	s.ch <- prometheus.MustNewConstMetric(d.desc, d.valueType, v, labels...)
}

func (s chanSink) histogram(d histDesc, count uint64, sum float64, buckets map[float64]uint64, labels ...string) {
	s.ch <- prometheus.MustNewConstHistogram(d.desc, count, sum, buckets, labels...)
}

// family is what the direct path needs of a descriptor: the name, the
// help, and the label names with the order that sorts them.
type family struct {
	name, help string
	labels     []string
	sorted     []int // label indexes in name order (the exposition's)
}

func newFamily(name, help string, labels []string) family {
	f := family{name: name, help: help, labels: labels, sorted: make([]int, len(labels))}
	for i := range f.sorted {
		f.sorted[i] = i
	}
	sort.Slice(f.sorted, func(a, b int) bool { return labels[f.sorted[a]] < labels[f.sorted[b]] })
	return f
}

// textSink writes each family's samples into its own buffer (the format
// wants a family's samples together; collect goes listener by listener).
type textSink struct {
	fams []*familyText
	by   map[string]*familyText
	// series expected per family (the listeners): buffers are sized once
	// instead of growing by copies (append grows large slices by 1.25x,
	// which allocated 6x the text).
	hint int
}

type familyText struct {
	f   *family
	typ string
	buf []byte
}

func (s *textSink) family(f *family, typ string) *familyText {
	if ft, ok := s.by[f.name]; ok {
		return ft
	}
	if s.by == nil {
		s.by = map[string]*familyText{}
	}
	ft := &familyText{f: f, typ: typ, buf: make([]byte, 0, max(s.hint, 1)*(len(f.name)+64))}
	s.by[f.name] = ft
	s.fams = append(s.fams, ft)
	return ft
}

// appendLabels writes {a="x",b="y"} in name order, then extra (le), as
// the text encoder does.
func appendLabels(b []byte, f *family, values []string, extraName, extraValue string) []byte {
	if len(f.sorted) == 0 && extraName == "" {
		return b
	}
	b = append(b, '{')
	for i, j := range f.sorted {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, f.labels[j]...)
		b = append(b, `="`...)
		b = appendEscaped(b, values[j])
		b = append(b, '"')
	}
	if extraName != "" {
		if len(f.sorted) > 0 {
			b = append(b, ',')
		}
		b = append(b, extraName...)
		b = append(b, `="`...)
		b = append(b, extraValue...)
		b = append(b, '"')
	}
	return append(b, '}')
}

func appendEscaped(b []byte, v string) []byte {
	if !strings.ContainsAny(v, "\\\"\n") {
		return append(b, v...)
	}
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, v[i])
		}
	}
	return b
}

// appendFloat writes v as the text encoder does.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case v == 1:
		return append(b, '1')
	case v == 0:
		return append(b, '0')
	case math.IsInf(v, +1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// expect is told the number of listeners before the first series.
func (s *textSink) expect(listeners int) { s.hint = listeners + 16 }

// room makes space for about n more bytes, doubling when it must grow.
func (ft *familyText) room(n int) {
	if cap(ft.buf)-len(ft.buf) < n {
		b := make([]byte, len(ft.buf), 2*cap(ft.buf)+n)
		copy(b, ft.buf)
		ft.buf = b
	}
}

func (s *textSink) value(d typedDesc, v float64, labels ...string) {
	typ := "gauge"
	if d.valueType == prometheus.CounterValue {
		typ = "counter"
	}
	ft := s.family(&d.family, typ)
	ft.room(len(d.name) + 256)
	ft.buf = append(ft.buf, d.name...)
	ft.buf = appendLabels(ft.buf, &d.family, labels, "", "")
	ft.buf = append(ft.buf, ' ')
	ft.buf = appendFloat(ft.buf, v)
	ft.buf = append(ft.buf, '\n')
}

func (s *textSink) histogram(d histDesc, count uint64, sum float64, buckets map[float64]uint64, labels ...string) {
	ft := s.family(&d.family, "histogram")
	bounds := make([]float64, 0, len(buckets))
	for b := range buckets {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	line := func(suffix, le string, v float64) {
		ft.room(len(d.name) + 256)
		ft.buf = append(ft.buf, d.name...)
		ft.buf = append(ft.buf, suffix...)
		if le != "" {
			ft.buf = appendLabels(ft.buf, &d.family, labels, "le", le)
		} else {
			ft.buf = appendLabels(ft.buf, &d.family, labels, "", "")
		}
		ft.buf = append(ft.buf, ' ')
		ft.buf = appendFloat(ft.buf, v)
		ft.buf = append(ft.buf, '\n')
	}
	var le []byte
	for _, b := range bounds {
		le = appendFloat(le[:0], b)
		line("_bucket", string(le), float64(buckets[b]))
	}
	line("_bucket", "+Inf", float64(count))
	line("_sum", "", sum)
	line("_count", "", float64(count))
}

// writeTo writes the families: HELP, TYPE, samples.
func (s *textSink) writeTo(w io.Writer) error {
	for _, ft := range s.fams {
		h := strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(ft.f.help)
		if _, err := io.WriteString(w, "# HELP "+ft.f.name+" "+h+"\n# TYPE "+ft.f.name+" "+ft.typ+"\n"); err != nil {
			return err
		}
		if _, err := w.Write(ft.buf); err != nil {
			return err
		}
	}
	return nil
}

// Handler serves /metrics: the collector's series written directly, then
// everything registered in rest (process, Go runtime, diagnosis; not the
// collector itself), in the text format (gzip when the scraper accepts
// it). Beyond maxInFlight concurrent scrapes it answers 503 instead of
// piling up collections; a failing part of rest is logged and the rest
// served.
func (c *Collector) Handler(rest prometheus.Gatherer, maxInFlight int, log zerolog.Logger) http.Handler {
	sem := make(chan struct{}, max(maxInFlight, 1))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		default:
			http.Error(w, "too many concurrent scrapes", http.StatusServiceUnavailable)
			return
		}
		var s textSink
		c.collect(&s)
		others, err := rest.Gather()
		if err != nil {
			log.Error().Err(err).Msg("scrape: gathering the process and diagnosis metrics failed; serving the rest")
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		var out io.Writer = w
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			gz := gzip.NewWriter(w)
			defer gz.Close()
			out = gz
		}
		if err := s.writeTo(out); err != nil {
			return // the scraper went away
		}
		for _, mf := range others {
			if _, err := expfmt.MetricFamilyToText(out, mf); err != nil {
				return
			}
		}
	})
}
