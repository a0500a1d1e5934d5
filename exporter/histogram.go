package exporter

import (
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
	buckets := make(map[float64]uint64, len(bucketBounds))
	var cum uint64
	for i, b := range bucketBounds {
		cum += h.counts[i].Load()
		buckets[b] = cum
	}
	cum += h.counts[len(bucketBounds)].Load()
	return cum, time.Duration(h.sum.Load()).Seconds(), buckets
}
