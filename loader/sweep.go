package loader

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// A closed listener keeps its registry entry, so that its final counters
// are scraped; sweepClosed forgets it once it has been closed for longer
// than the retention. Without it, listener churn (pods coming and going)
// would fill the registry with dead entries until the LRU evicted live
// ones.

// sweepEvery is how often closed listeners are looked for (more often
// when the retention is shorter).
const sweepEvery = 10 * time.Second

func monotonicNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// sweepClosed deletes the entries of listeners closed for longer than
// retention and returns how many it deleted.
func (t *Tracer) sweepClosed(now, retention time.Duration) (int, error) {
	m := t.maps[bpfMapLwListeners]
	var stale []bpfLwListenerKey
	err := readMap(m, func(k *bpfLwListenerKey, v *bpfLwListenerStats) {
		if expired(v, now, retention) {
			stale = append(stale, *k)
		}
	})
	if err != nil {
		return 0, fmt.Errorf("sweep listeners: %w", err)
	}
	var v bpfLwListenerStats
	n := 0
	for _, k := range stale {
		// Read again just before the delete: a listener that listened
		// again meanwhile is live and stays.
		if err := m.Lookup(&k, &v); err != nil || !expired(&v, now, retention) {
			continue
		}
		t.forgotten(listenerKey(&k))
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("forget closed listener: %w", err)
		}
		n++
	}
	return n, nil
}

func expired(v *bpfLwListenerStats, now, retention time.Duration) bool {
	return v.Sockets <= 0 && v.ClosedAt != 0 && now-time.Duration(v.ClosedAt) > retention
}

// sweep runs sweepClosed until ctx ends.
func (t *Tracer) sweep(ctx context.Context) {
	tick := time.NewTicker(min(sweepEvery, t.cfg.ClosedRetention/2))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			n, err := t.sweepClosed(monotonicNow(), t.cfg.ClosedRetention)
			if err != nil {
				t.log.Error().Err(err).Msg("cannot forget closed listeners")
			} else if n > 0 {
				t.log.Debug().Int("listeners", n).Dur("closed_for_more_than", t.cfg.ClosedRetention).Msg("forgot closed listeners")
			}
		}
	}
}
