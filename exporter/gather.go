package exporter

import (
	"slices"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// A node has thousands of listeners and each has about 18 series: a
// registry spends most of a 10,000-listener scrape checking and sorting
// series one by one (label pairs built and sorted per series, a hash per
// series for duplicates, the family sorted by label values, and the
// garbage of all that: 2 s and 166 MB per scrape, BenchmarkScrape10k).
// The collector's series are unique by construction (one per listener
// and label value), so /metrics takes them as protobufs written directly
// (Gatherer); Collect writes the very same series, through the same
// collect, for registries and tests.

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

func (f *family) pairs(values []string) []*dto.LabelPair {
	// One allocation each for the pairs and their values, not one per
	// label.
	out := make([]*dto.LabelPair, len(f.sorted))
	backing := make([]dto.LabelPair, len(f.sorted))
	vals := make([]string, len(f.sorted))
	for i, j := range f.sorted {
		vals[i] = values[j]
		backing[i].Name, backing[i].Value = &f.labels[j], &vals[i]
		out[i] = &backing[i]
	}
	return out
}

// dtoSink builds the families as the exposition encoder takes them.
type dtoSink struct {
	fams  []*dto.MetricFamily
	index map[string]*dto.MetricFamily
	// A listener's dozen series share their label pairs: the encoder only
	// reads them. The pairs of the last label set written are kept.
	lastFamily *family
	lastValues []string
	lastPairs  []*dto.LabelPair
	// Metrics and counters come from chunks: one allocation per 256.
	metrics  []dto.Metric
	counters []dto.Counter
	floats   []float64
}

func (s *dtoSink) pairs(f *family, values []string) []*dto.LabelPair {
	if s.lastFamily != nil && slices.Equal(s.lastFamily.labels, f.labels) && slices.Equal(s.lastValues, values) {
		return s.lastPairs
	}
	s.lastFamily, s.lastValues, s.lastPairs = f, values, f.pairs(values)
	return s.lastPairs
}

func (s *dtoSink) metric() *dto.Metric {
	if len(s.metrics) == 0 {
		s.metrics = make([]dto.Metric, 256)
	}
	m := &s.metrics[0]
	s.metrics = s.metrics[1:]
	return m
}

func (s *dtoSink) family(f *family, t dto.MetricType) *dto.MetricFamily {
	if mf, ok := s.index[f.name]; ok {
		return mf
	}
	mf := &dto.MetricFamily{Name: &f.name, Help: &f.help, Type: t.Enum()}
	if s.index == nil {
		s.index = map[string]*dto.MetricFamily{}
	}
	s.index[f.name] = mf
	s.fams = append(s.fams, mf)
	return mf
}

func (s *dtoSink) float(v float64) *float64 {
	if len(s.floats) == 0 {
		s.floats = make([]float64, 256)
	}
	f := &s.floats[0]
	s.floats = s.floats[1:]
	*f = v
	return f
}

func (s *dtoSink) value(d typedDesc, v float64, labels ...string) {
	m := s.metric()
	m.Label = s.pairs(&d.family, labels)
	t := dto.MetricType_GAUGE
	if d.valueType == prometheus.CounterValue {
		t = dto.MetricType_COUNTER
		if len(s.counters) == 0 {
			s.counters = make([]dto.Counter, 256)
		}
		m.Counter = &s.counters[0]
		s.counters = s.counters[1:]
		m.Counter.Value = s.float(v)
	} else {
		m.Gauge = &dto.Gauge{Value: s.float(v)}
	}
	mf := s.family(&d.family, t)
	mf.Metric = append(mf.Metric, m)
}

func (s *dtoSink) histogram(d histDesc, count uint64, sum float64, buckets map[float64]uint64, labels ...string) {
	h := &dto.Histogram{SampleCount: &count, SampleSum: &sum}
	bounds := make([]float64, 0, len(buckets))
	for b := range buckets {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	bs := make([]dto.Bucket, len(bounds))
	for i, b := range bounds {
		c := buckets[b]
		bs[i].UpperBound, bs[i].CumulativeCount = &bounds[i], &c
		h.Bucket = append(h.Bucket, &bs[i])
	}
	mf := s.family(&d.family, dto.MetricType_HISTOGRAM)
	m := s.metric()
	m.Label, m.Histogram = s.pairs(&d.family, labels), h
	mf.Metric = append(mf.Metric, m)
}

// Gatherer serves the collector's series directly and the rest (process,
// Go runtime, diagnosis: everything registered in rest) through rest; the
// collector must not be registered in rest too.
func (c *Collector) Gatherer(rest prometheus.Gatherer) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		var s dtoSink
		c.collect(&s)
		other, err := rest.Gather()
		fams := append(s.fams, other...)
		sort.Slice(fams, func(i, j int) bool { return fams[i].GetName() < fams[j].GetName() })
		return fams, err
	})
}
