package loader

import (
	"fmt"
	"strings"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
)

// Config is everything the loader can be told. The zero value of a field
// means its default.
type Config struct {
	// Mode forces one attach mode for every stage; auto picks per stage.
	// A forced mode that does not load is an error, never a fallback.
	Mode events.Mode
	// Disabled stages are not attached at all (they report mode "none").
	Disabled []events.Stage
	// RingbufSize is the ring buffer's size in bytes: a power of two and a
	// multiple of the page size.
	RingbufSize uint32
	// ConnTableSize bounds the handshake -> accept table (LRU).
	ConnTableSize uint32
	// ListenerTableSize bounds the listener registry (LRU).
	ListenerTableSize uint32
	// PollInterval is how often the reader drains the ring buffer when the
	// kernel has not woken it.
	PollInterval time.Duration
	// ClosedRetention is how long a closed listener's entry (and its final
	// counters) stays after its last socket closed.
	ClosedRetention time.Duration
	// Proc is where /proc is read (kallsyms, existing listeners and their
	// owners); the zero value is /proc.
	Proc procfs.FS
	// WakeupBytes: the kernel wakes the reader only once this much is
	// waiting, so a busy listener does not pay a wake-up per connection.
	WakeupBytes uint32
}

const (
	DefaultRingbufSize       = 1 << 20
	DefaultConnTableSize     = 32768
	DefaultListenerTableSize = 16384
	DefaultPollInterval      = 100 * time.Millisecond
	DefaultClosedRetention   = 5 * time.Minute
)

func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = events.ModeAuto
	}
	if c.RingbufSize == 0 {
		c.RingbufSize = DefaultRingbufSize
	}
	if c.ConnTableSize == 0 {
		c.ConnTableSize = DefaultConnTableSize
	}
	if c.ListenerTableSize == 0 {
		c.ListenerTableSize = DefaultListenerTableSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.ClosedRetention == 0 {
		c.ClosedRetention = DefaultClosedRetention
	}
	if c.WakeupBytes == 0 {
		c.WakeupBytes = c.RingbufSize / 4
	}
	return c
}

// Validate reports the first setting that cannot work, in the user's terms.
func (c Config) Validate() error {
	c = c.withDefaults()
	if _, err := events.ParseMode(string(c.Mode)); err != nil {
		return err
	}
	if c.RingbufSize < 4096 || c.RingbufSize&(c.RingbufSize-1) != 0 {
		return fmt.Errorf("ring buffer size %d: must be a power of two, at least 4096", c.RingbufSize)
	}
	if c.WakeupBytes > c.RingbufSize {
		return fmt.Errorf("wake-up threshold %d is larger than the ring buffer (%d)", c.WakeupBytes, c.RingbufSize)
	}
	if c.ClosedRetention < time.Second {
		return fmt.Errorf("closed-listener retention %v: must be at least 1s (longer than a scrape interval, or final counters are lost)", c.ClosedRetention)
	}
	if c.PollInterval < time.Millisecond {
		return fmt.Errorf("poll interval %v: must be at least 1ms", c.PollInterval)
	}
	return nil
}

func (c Config) disabled(s events.Stage) bool {
	for _, d := range c.Disabled {
		if d == s {
			return true
		}
	}
	return false
}

func (c Config) String() string {
	var d []string
	for _, s := range c.Disabled {
		d = append(d, string(s))
	}
	return fmt.Sprintf("mode=%s disabled=[%s] ringbuf=%d", c.Mode, strings.Join(d, ","), c.RingbufSize)
}
