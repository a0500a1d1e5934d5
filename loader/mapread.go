package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// batchSize is how many entries one batch read returns.
const batchSize = 256

// readMap calls fn for every entry of a hash map. It reads in batches
// (BPF_MAP_LOOKUP_BATCH walks the buckets, so entries added or removed
// meanwhile cannot make it start over, as key-by-key iteration does when
// its cursor key is deleted: "iteration aborted" under listener churn),
// and falls back to key-by-key iteration where the kernel has no batch
// operations for the map.
func readMap[K, V any](m *ebpf.Map, fn func(*K, *V)) error {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]K, batchSize)
		vals   = make([]V, batchSize)
	)
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(&keys[i], &vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil // the last batch
		case errors.Is(err, ebpf.ErrNotSupported):
			return iterateMap(m, fn)
		case err != nil:
			return fmt.Errorf("read map %s: %w", m, err)
		}
	}
}

func iterateMap[K, V any](m *ebpf.Map, fn func(*K, *V)) error {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(&k, &v)
	}
	return it.Err()
}
