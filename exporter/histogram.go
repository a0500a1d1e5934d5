package exporter

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency buckets, in seconds: 10 us to 10 s in a 1-2.5-5 series, enough to
// tell a loopback handshake (tens of us) from a SYN-ACK retransmit (1 s)
// and a stalled acceptor (seconds).
var bucketBounds = []float64{
	10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}

var boundsNs = func() []time.Duration {
	b := make([]time.Duration, len(bucketBounds))
	for i, s := range bucketBounds {
		b[i] = time.Duration(s*1e9 + 0.5)
	}
	return b
}()

// hist is a lock-free latency histogram. Observe runs on the reader's hot
// path (no allocation, no lock); the scrape builds a const histogram from it.
type hist struct {
	counts [20]atomic.Uint64 // len(bucketBounds)+1: the last is +Inf
	sum    atomic.Int64      // ns
}

func (h *hist) observe(d time.Duration) {
	// Binary search for the first bound >= d (Prometheus buckets are le).
	lo, hi := 0, len(boundsNs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if boundsNs[m] < d {
			lo = m + 1
		} else {
			hi = m
		}
	}
	h.counts[lo].Add(1)
	h.sum.Add(int64(d))
}

// snapshot returns count, sum in seconds, and cumulative buckets.
func (h *hist) snapshot() (uint64, float64, map[float64]uint64) {
	n, buckets := cumulate(h.counts[:], bucketBounds)
	return n, time.Duration(h.sum.Load()).Seconds(), buckets
}

// cumulate turns per-bucket counts (the last one +Inf) into Prometheus's
// cumulative buckets and the total count.
func cumulate(counts []atomic.Uint64, bounds []float64) (uint64, map[float64]uint64) {
	buckets := make(map[float64]uint64, len(bounds))
	var cum uint64
	for i, b := range bounds {
		cum += counts[i].Load()
		buckets[b] = cum
	}
	return cum + counts[len(bounds)].Load(), buckets
}

// Accept-queue length buckets: 0, 1, 2, 4 ... 65536 (powers of two, the
// backlogs people configure).
var queueBounds = func() []float64 {
	b := []float64{0}
	for v := 1.0; v <= 65536; v *= 2 {
		b = append(b, v)
	}
	return b
}()

// lenHist is a lock-free histogram of queue lengths.
type lenHist struct {
	counts [19]atomic.Uint64 // len(queueBounds)+1
	sum    atomic.Uint64
}

func (h *lenHist) observe(n uint32) {
	i := 0
	if n > 0 {
		i = bits.Len32(n-1) + 1 // first power of two >= n
		if i > len(queueBounds) {
			i = len(queueBounds)
		}
	}
	h.counts[i].Add(1)
	h.sum.Add(uint64(n))
}

func (h *lenHist) snapshot() (uint64, float64, map[float64]uint64) {
	n, buckets := cumulate(h.counts[:], queueBounds)
	return n, float64(h.sum.Load()), buckets
}
