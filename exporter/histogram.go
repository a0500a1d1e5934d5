package exporter

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency buckets, in seconds: 12 bounds from 100 us to 10 s, chosen for
// what each tells an operator: under 100 us a loopback or same-host
// handshake; 1-10 ms a healthy network round trip; 50-500 ms a slow
// acceptor; 1 s and 3 s the first SYN and SYN-ACK retransmit timeouts (a
// lost packet); 10 s a stalled accept loop. Twelve, not twenty: a
// histogram costs bounds+3 series per listener, and a node has hundreds.
// An array, not a slice: the counters below are sized from its length at
// compile time, so adding a bound cannot overrun them.
var bucketBounds = [...]float64{
	100e-6, 500e-6, 1e-3, 5e-3, 10e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 3, 10,
}

var boundsNs = func() (b [len(bucketBounds)]time.Duration) {
	for i, s := range bucketBounds {
		b[i] = time.Duration(s*1e9 + 0.5)
	}
	return b
}()

// hist is a lock-free latency histogram. Observe runs on the reader's hot
// path (no allocation, no lock); the scrape builds a const histogram from it.
type hist struct {
	counts [len(bucketBounds) + 1]atomic.Uint64 // the last is +Inf
	sum    atomic.Int64                         // ns
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

// sumSeconds is the sum of every observation, in seconds.
func (h *hist) sumSeconds() float64 { return time.Duration(h.sum.Load()).Seconds() }

// snapshot returns count, sum in seconds, and cumulative buckets.
func (h *hist) snapshot() (uint64, float64, map[float64]uint64) {
	n, buckets := cumulate(h.counts[:], bucketBounds[:])
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

// Accept-queue length buckets: 0, then powers of two up to 65536 (the
// backlogs people configure). Bucket i > 0 is 2^(i-1).
const queueMaxShift = 16

var queueBounds = func() (b [queueMaxShift + 2]float64) {
	for i := 1; i < len(b); i++ {
		b[i] = float64(uint64(1) << (i - 1))
	}
	return b
}()

// lenHist is a lock-free histogram of queue lengths.
type lenHist struct {
	counts [len(queueBounds) + 1]atomic.Uint64 // the last is +Inf
	sum    atomic.Uint64
}

func (h *lenHist) observe(n uint32) {
	i := 0
	if n > 0 {
		i = min(bits.Len32(n-1)+1, len(queueBounds)) // first power of two >= n, else +Inf
	}
	h.counts[i].Add(1)
	h.sum.Add(uint64(n))
}

func (h *lenHist) snapshot() (uint64, float64, map[float64]uint64) {
	n, buckets := cumulate(h.counts[:], queueBounds[:])
	return n, float64(h.sum.Load()), buckets
}
