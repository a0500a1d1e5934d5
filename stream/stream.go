// Package stream is what `listenwatch trace` and the agent's
// /api/v1/events show: every accepted connection and every drop record
// the kernel sent, filtered, fanned out to any number of readers. The ring
// buffer's reader publishes and never waits: a reader that falls behind
// loses records, and the count of what it lost is part of its stream.
package stream

import (
	"sync"
	"sync/atomic"

	"github.com/listenwatch/listenwatch/events"
)

// Record is one record from the kernel, by value: it goes through
// channels without an allocation.
type Record struct {
	Kind events.Kind
	Conn events.Conn // KindAccept
	Drop events.Drop // KindDrop
}

// Hub hands each record to every subscriber whose filter takes it.
type Hub struct {
	mu   sync.Mutex
	subs atomic.Pointer[[]*Sub] // copied on write: the publisher only loads
}

// Sub is one subscriber: a bounded queue, and what did not fit in it.
type Sub struct {
	c      chan Record
	filter Filter
	lost   atomic.Uint64
}

// Lost is how many records this subscriber's filter took that its queue
// had no room for (the reader was too slow).
func (s *Sub) Lost() uint64 { return s.lost.Load() }

// Records is the subscriber's queue.
func (s *Sub) Records() <-chan Record { return s.c }

// Subscribe adds a subscriber whose queue holds up to queue records.
func (h *Hub) Subscribe(f Filter, queue int) *Sub {
	s := &Sub{c: make(chan Record, max(queue, 1)), filter: f}
	h.mu.Lock()
	defer h.mu.Unlock()
	var cur []*Sub
	if p := h.subs.Load(); p != nil {
		cur = *p
	}
	next := append(append(make([]*Sub, 0, len(cur)+1), cur...), s)
	h.subs.Store(&next)
	return s
}

// Unsubscribe removes s; records are no longer queued for it.
func (h *Hub) Unsubscribe(s *Sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.subs.Load()
	if p == nil {
		return
	}
	next := make([]*Sub, 0, len(*p))
	for _, o := range *p {
		if o != s {
			next = append(next, o)
		}
	}
	h.subs.Store(&next)
}

// Subscribers is how many subscribers there are now.
func (h *Hub) Subscribers() int {
	if p := h.subs.Load(); p != nil {
		return len(*p)
	}
	return 0
}

// Conn publishes an accepted connection. With no subscriber it costs one
// atomic load; it never blocks.
func (h *Hub) Conn(c *events.Conn) {
	p := h.subs.Load()
	if p == nil || len(*p) == 0 {
		return
	}
	for _, s := range *p {
		if s.filter.MatchConn(c) {
			s.offer(Record{Kind: events.KindAccept, Conn: *c})
		}
	}
}

// Drop publishes a drop record, as Conn does.
func (h *Hub) Drop(d *events.Drop) {
	p := h.subs.Load()
	if p == nil || len(*p) == 0 {
		return
	}
	for _, s := range *p {
		if s.filter.MatchDrop(d) {
			s.offer(Record{Kind: events.KindDrop, Drop: *d})
		}
	}
}

func (s *Sub) offer(r Record) {
	select {
	case s.c <- r:
	default:
		s.lost.Add(1)
	}
}
