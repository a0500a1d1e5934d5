package main

// Cost at a fixed load: what a node pays for listenwatch is CPU per
// connection at the load it runs, not the loss of a maximum it never
// reaches. An open-loop client offers a fixed rate (40% of the measured
// maximum by default) with and without the agent, in A B B A order; the
// whole machine's CPU time (/proc/stat: clients, server, kernel, agent and
// its BPF programs) per accepted connection is compared.

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/listenwatch/listenwatch/internal/netnstest"
)

var (
	costPairs = flag.Int("cost-pairs", 10, "fixed-load pairs, in A B B A order (0: skip)")
	costRound = flag.Duration("cost-round", 4*time.Second, "duration of a fixed-load round")
	costRate  = flag.Float64("cost-rate", 0, "offered connections/s of the fixed load (0: 40% of the measured maximum)")
)

type costPair struct {
	WithoutUsPerConn float64 `json:"without_cpu_us_per_conn"`
	WithUsPerConn    float64 `json:"with_cpu_us_per_conn"`
	Ratio            float64 `json:"ratio"`
	AgentFirst       bool    `json:"agent_first"`
}

// machineCPU is the CPU time all cores spent not idle, in seconds (user,
// nice, system, irq, softirq, steal of /proc/stat's cpu line).
func machineCPU() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var sum float64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system (idle iowait) irq softirq steal
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum / 100, nil // USER_HZ
}

// paced offers rate connections/s to s for d, whatever the server does
// (open loop): a ticket per connection on a schedule, taken by workers.
// Tickets queue for up to 100 ms of the schedule (a worker descheduled
// for a moment catches up); one that finds the queue full is late, and a
// round with more than 1% late did not offer its load: an error.
func paced(ns *netnstest.NS, s *server, rate float64, d time.Duration) (accepted int64, err error) {
	if s.useTUN {
		return pacedTUN(s, rate, d)
	}
	workers := max(*clients*4, 8)
	tickets := make(chan struct{}, max(int(rate/10), workers))
	var late, offered atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns.Do(func() error {
				dialer := net.Dialer{Timeout: time.Second}
				for {
					select {
					case <-stop:
						return nil
					case <-tickets:
					}
					connectOnce(&dialer, s.addr)
				}
			})
		}()
	}
	start := s.accepted.Load()
	gap := time.Duration(float64(time.Second) / rate)
	t0 := time.Now()
	for next := t0; time.Since(t0) < d; next = next.Add(gap) {
		time.Sleep(time.Until(next))
		offered.Add(1)
		select {
		case tickets <- struct{}{}:
		default:
			late.Add(1)
		}
	}
	time.Sleep(100 * time.Millisecond) // the last connections land
	accepted = s.accepted.Load() - start
	close(stop)
	wg.Wait()
	if l := late.Load(); float64(l) > 0.01*float64(offered.Load()) {
		return accepted, fmt.Errorf("the client fell behind its schedule (%d of %d connections late): lower -cost-rate", l, offered.Load())
	}
	return accepted, nil
}

// pacedTUN is paced with the TUN client: the schedule writes each SYN
// itself (a write, no worker); a connection whose SYN went out more than
// 100 ms behind its time is late, and more than 1% late fails the round.
func pacedTUN(s *server, rate float64, d time.Duration) (accepted int64, err error) {
	var buf [44]byte
	var late, offered int64
	start := s.accepted.Load()
	gap := time.Duration(float64(time.Second) / rate)
	t0 := time.Now()
	for next := t0; time.Since(t0) < d; next = next.Add(gap) {
		if w := time.Until(next); w > 0 {
			time.Sleep(w)
		} else if w < -100*time.Millisecond {
			late++
		}
		offered++
		s.tun.syn(buf[:])
	}
	time.Sleep(100 * time.Millisecond) // the last connections land
	accepted = s.accepted.Load() - start
	if err := s.tun.err(); err != nil {
		return accepted, err
	}
	if float64(late) > 0.01*float64(offered) {
		return accepted, fmt.Errorf("the client fell behind its schedule (%d of %d connections late): lower -cost-rate", late, offered)
	}
	return accepted, nil
}

// costRound is the machine's CPU microseconds per accepted connection at
// the fixed load.
func costRoundOnce(ns *netnstest.NS, s *server, rate float64) (float64, error) {
	c0, err := machineCPU()
	if err != nil {
		return 0, err
	}
	n, err := paced(ns, s, rate, *costRound)
	if err != nil {
		return 0, err
	}
	c1, err := machineCPU()
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, errors.New("a fixed-load round made no connection")
	}
	return (c1 - c0) / float64(n) * 1e6, nil
}

// costPairsRun runs the fixed-load pairs: A B, then B A, ... (A: without).
func costPairsRun(ns *netnstest.NS, s *server, rate float64) ([]costPair, error) {
	var out []costPair
	for i := range *costPairs {
		p := costPair{AgentFirst: i%2 == 1}
		for _, withAgent := range []bool{p.AgentFirst, !p.AgentFirst} {
			if !withAgent {
				v, err := costRoundOnce(ns, s, rate)
				if err != nil {
					return nil, fmt.Errorf("fixed-load pair %d without: %w", i+1, err)
				}
				p.WithoutUsPerConn = v
				continue
			}
			ag, err := startAgent()
			if err != nil {
				return nil, err
			}
			time.Sleep(500 * time.Millisecond) // past its start-up work
			v, err := costRoundOnce(ns, s, rate)
			if err == nil {
				_, err = ag.metric("listenwatch_ringbuf_lost_events_total") // the agent still answers
			}
			ag.stop()
			// The kernel frees the agent's maps and programs after it
			// exits (RCU, kworkers): not the next round's to pay.
			time.Sleep(2 * time.Second)
			if err != nil {
				return nil, fmt.Errorf("fixed-load pair %d with: %w", i+1, err)
			}
			p.WithUsPerConn = v
		}
		p.Ratio = p.WithUsPerConn / p.WithoutUsPerConn
		fmt.Fprintf(os.Stderr, "fixed-load pair %d: without %.1f us/conn with %.1f us/conn ratio %.3f\n", i+1, p.WithoutUsPerConn, p.WithUsPerConn, p.Ratio)
		out = append(out, p)
	}
	return out, nil
}

// bootstrapMedianCI is the 95% interval of the median of v, by resampling
// v 10,000 times (fixed seed: the same figures give the same interval).
func bootstrapMedianCI(v []float64) (lo, hi float64) {
	if len(v) == 0 {
		return 0, 0
	}
	r := rand.New(rand.NewPCG(1, 2))
	meds := make([]float64, 10000)
	sample := make([]float64, len(v))
	for i := range meds {
		for j := range sample {
			sample[j] = v[r.IntN(len(v))]
		}
		meds[i] = median(sample)
	}
	sort.Float64s(meds)
	return meds[len(meds)*25/1000], meds[len(meds)*975/1000-1]
}
