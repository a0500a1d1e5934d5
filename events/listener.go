package events

// Listener is a listener's state as the kernel counted it, read at scrape
// time. Counters are cumulative since the listener was first seen.
type Listener struct {
	Key        ListenerKey
	SYNs       uint64 // SYNs received
	Handshakes uint64 // handshakes completed
	Accepted   uint64 // connections returned by accept()
	Sockets    int64  // listening sockets with this identity now
	Backlog    uint32 // effective backlog (sk_max_ack_backlog); 0 if unknown
	// RequestedBacklog is what listen() asked for, before the somaxconn
	// cap; 0 when the listener predates the agent.
	RequestedBacklog uint32
	PID              uint32 // the last process to listen(), or the first to accept()
	Comm             string
	// Owners are the processes that called listen() or accept() on it
	// (0: free slot); some may have exited since.
	Owners [OwnersMax]uint32
	// Queue lengths as of the last SYN the listener received.
	AcceptQueueLen, SYNQueueLen uint32

	Drops [DropReasons]uint64 // by DropReason
	// DropsUnreported are the drops, by reason, not sent as Drop records
	// (over DropRecordsPerSecond, or the ring buffer full): the sum of
	// the records' counts and these is Drops, exactly.
	DropsUnreported [DropReasons]uint64
	CookiesSent     uint64 // SYNs answered with a SYN cookie
	SynackRetrans   uint64 // SYN-ACKs retransmitted
	AcceptEMFILE    uint64 // accept() failed: process fd limit
	AcceptENFILE    uint64 // accept() failed: system file limit
}

// OwnersMax is how many owning processes a listener remembers (the
// kernel's LW_OWNERS_MAX; the loader checks they agree).
const OwnersMax = 4

// DropReason says why a listener refused a connection.
type DropReason int

// The reasons, in the order of enum lw_drop in bpf/listenwatch.h; the
// loader checks each value against the generated constant.
const (
	DropAcceptQueueSYN       DropReason = iota // SYN while the accept queue was full
	DropAcceptQueueACK                         // final ACK while the accept queue was full
	DropAcceptQueueCookieACK                   // cookie ACK while the accept queue was full
	DropSYNQueueFull                           // SYN dropped: SYN queue full, no cookies
	DropOther                                  // any other ListenDrops
	DropReasons              = iota            // how many reasons there are
)

// String is the reason's metric label.
func (r DropReason) String() string {
	switch r {
	case DropAcceptQueueSYN:
		return "accept_queue_full_syn"
	case DropAcceptQueueACK:
		return "accept_queue_full_ack"
	case DropAcceptQueueCookieACK:
		return "accept_queue_full_cookie_ack"
	case DropSYNQueueFull:
		return "syn_queue_full"
	}
	return "other"
}

// Overflows is the listener's share of the kernel's ListenOverflows.
func (l *Listener) Overflows() uint64 {
	return l.Drops[DropAcceptQueueSYN] + l.Drops[DropAcceptQueueACK] + l.Drops[DropAcceptQueueCookieACK]
}

// TotalDrops is the listener's share of the kernel's ListenDrops.
func (l *Listener) TotalDrops() uint64 {
	var n uint64
	for _, d := range l.Drops {
		n += d
	}
	return n
}

// Counters are the tracer's own health counters.
type Counters struct {
	RingbufLost           uint64 // records the kernel could not reserve
	DecodeErrors          uint64 // records the reader could not decode
	Records               uint64 // records read
	UnattributedSYN       uint64 // SYNs to no registered listener
	UnattributedHandshake uint64
	UnattributedAccept    uint64
	// ListenersEvicted counts listeners that were open at one reading of
	// the registry and gone from it at the next without being closed: the
	// table (LRU, ListenerCapacity entries) was full and the kernel evicted
	// them, their counts lost.
	ListenersEvicted uint64
	ListenerCapacity uint64
}

// Delta is cur - prev for a cumulative counter. ok is false when the
// counter went backwards: its owner restarted (a listener closed and
// opened again starts from zero), and cur alone is the new baseline.
func Delta(cur, prev uint64) (d uint64, ok bool) {
	if cur < prev {
		return 0, false
	}
	return cur - prev, true
}
