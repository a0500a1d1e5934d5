package loader

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"golang.org/x/sys/unix"
)

func record(e bpfLwEvent) []byte {
	b := make([]byte, EventSize)
	*(*bpfLwEvent)(unsafe.Pointer(&b[0])) = e
	return b
}

func TestDecodeIPv4(t *testing.T) {
	e := bpfLwEvent{
		T_synack: 1000, T_est: 2000, T_acc: 5000,
		Listener: bpfLwListenerKey{Netns: 4026531840, Port: 8080, Family: unix.AF_INET, Addr: [16]byte{10, 0, 0, 5}},
		Raddr:    [16]byte{10, 0, 0, 9}, Rport: 40000,
		Flags: uint32(bpfLwFlagLW_F_HANDSHAKE | bpfLwFlagLW_F_SYN_SRTT), Pid: 77,
		Ackq: 3,
	}
	var c events.Conn
	if err := Decode(record(e), &c); err != nil {
		t.Fatal(err)
	}
	want := events.Conn{
		Listener: events.ListenerKey{Netns: 4026531840, Addr: netip.MustParseAddr("10.0.0.5"), Port: 8080},
		Client:   netip.MustParseAddrPort("10.0.0.9:40000"),
		PID:      77, Flags: events.FlagHandshake | events.FlagSYNFromRTT,
		SYNACKSent: 1000, Established: 2000, Accepted: 5000 * time.Nanosecond, AcceptQueueLen: 3,
	}
	if c != want {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
}

func TestDecodeIPv6DualStack(t *testing.T) {
	// An IPv4 client of a dual-stack [::] listener: the kernel reports the
	// client as v4-mapped; the listener stays [::].
	mapped := netip.MustParseAddr("::ffff:127.0.0.1").As16()
	e := bpfLwEvent{
		T_acc: 1, Listener: bpfLwListenerKey{Netns: 1, Port: 443, Family: unix.AF_INET6},
		Raddr: mapped, Rport: 5,
	}
	var c events.Conn
	if err := Decode(record(e), &c); err != nil {
		t.Fatal(err)
	}
	if c.Listener.Addr != netip.IPv6Unspecified() || c.Client != netip.MustParseAddrPort("127.0.0.1:5") {
		t.Fatalf("got listener %v client %v", c.Listener.Addr, c.Client)
	}
}

func TestDecodeDrop(t *testing.T) {
	mapped := netip.MustParseAddr("::ffff:10.0.0.9").As16()
	for _, tc := range []struct {
		name string
		e    bpfLwEvent
		want events.Drop
	}{
		{"ipv4 with client", bpfLwEvent{
			T_acc: 9000, Kind: uint8(bpfLwKindLW_K_DROP), Reason: uint8(bpfLwDropLW_DROP_SYNQ_FULL), Count: 3, Ackq: 2,
			Listener: bpfLwListenerKey{Netns: 5, Port: 80, Family: unix.AF_INET, Addr: [16]byte{127, 0, 0, 1}},
			Raddr:    [16]byte{10, 0, 0, 9}, Rport: 1234,
		}, events.Drop{
			Listener: events.ListenerKey{Netns: 5, Addr: netip.MustParseAddr("127.0.0.1"), Port: 80},
			Client:   netip.MustParseAddrPort("10.0.0.9:1234"), Reason: events.DropSYNQueueFull, Count: 3, At: 9000, AcceptQueueLen: 2,
		}},
		{"dual-stack, client unknown, reason out of range", bpfLwEvent{
			T_acc: 1, Kind: uint8(bpfLwKindLW_K_DROP), Reason: 200, Count: 0,
			Listener: bpfLwListenerKey{Netns: 5, Port: 443, Family: unix.AF_INET6}, Raddr: mapped,
		}, events.Drop{
			Listener: events.ListenerKey{Netns: 5, Addr: netip.IPv6Unspecified(), Port: 443},
			Reason:   events.DropOther, Count: 1, At: 1,
		}},
		{"dual-stack, ipv4 client", bpfLwEvent{
			T_acc: 1, Kind: uint8(bpfLwKindLW_K_DROP), Reason: uint8(bpfLwDropLW_DROP_ACCEPTQ_ACK), Count: 1,
			Listener: bpfLwListenerKey{Netns: 5, Port: 443, Family: unix.AF_INET6}, Raddr: mapped, Rport: 7,
		}, events.Drop{
			Listener: events.ListenerKey{Netns: 5, Addr: netip.IPv6Unspecified(), Port: 443},
			Client:   netip.MustParseAddrPort("10.0.0.9:7"), Reason: events.DropAcceptQueueACK, Count: 1, At: 1,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := record(tc.e)
			if k, err := RecordKind(raw); err != nil || k != events.KindDrop {
				t.Fatalf("kind %v, %v", k, err)
			}
			var d events.Drop
			if err := DecodeDrop(raw, &d); err != nil {
				t.Fatal(err)
			}
			if d != tc.want {
				t.Fatalf("got %+v\nwant %+v", d, tc.want)
			}
		})
	}
	if _, err := RecordKind(record(bpfLwEvent{Kind: 9})); !errors.Is(err, ErrRecordKind) {
		t.Fatalf("kind 9: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	var c events.Conn
	if err := Decode(make([]byte, EventSize-1), &c); !errors.Is(err, ErrShortRecord) {
		t.Fatalf("short record: %v", err)
	}
	if err := Decode(nil, &c); !errors.Is(err, ErrShortRecord) {
		t.Fatalf("nil record: %v", err)
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	b := record(bpfLwEvent{T_acc: 1, Listener: bpfLwListenerKey{Family: unix.AF_INET6}})
	var c events.Conn
	if a := testing.AllocsPerRun(1000, func() { _ = Decode(b, &c) }); a != 0 {
		t.Fatalf("Decode allocates %.1f times per record", a)
	}
}

func BenchmarkDecode(b *testing.B) {
	raw := record(bpfLwEvent{T_synack: 1, T_est: 2, T_acc: 3,
		Listener: bpfLwListenerKey{Family: unix.AF_INET, Port: 80}})
	var c events.Conn
	b.ReportAllocs()
	for b.Loop() {
		if err := Decode(raw, &c); err != nil {
			b.Fatal(err)
		}
	}
}

// fixtures is a /proc tree in testdata: the readers run on it as on /proc.
var fixtures = procfs.New("testdata/proc")

func TestReadProcTCP(t *testing.T) {
	ls, err := readProcTCP(fixtures.Path("net", "tcp"), 7)
	if err != nil {
		t.Fatal(err)
	}
	// Only LISTEN (0A) lines; an established one is skipped.
	if len(ls) != 2 || ls[0].inode != 12345 || ls[0].key.Port != 8080 || ls[0].key.Family != unix.AF_INET ||
		ls[0].key.Addr != [16]byte{127, 0, 0, 1} || ls[0].key.Netns != 7 || ls[1].key.Port != 22 || ls[1].key.Addr != [16]byte{} {
		t.Fatalf("got %+v", ls)
	}
	ls, err = readProcTCP(fixtures.Path("net", "tcp6"), 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || netip.AddrFrom16(ls[0].key.Addr) != netip.IPv6Loopback() || ls[0].key.Port != 80 || ls[0].inode != 999 {
		t.Fatalf("got %+v", ls)
	}
}

func TestSymbolRange(t *testing.T) {
	lo, hi, err := symbolRange(fixtures.Path("kallsyms"), "tcp_rcv_state_process")
	if err != nil {
		t.Fatal(err)
	}
	// The .cold part at the same address is not the next symbol.
	if lo != 0xffffffff81a0b2c0 || hi != 0xffffffff81a0c9a0 {
		t.Fatalf("range %#x-%#x", lo, hi)
	}
	if _, _, err := symbolRange(fixtures.Path("kallsyms"), "tcp_nope"); !errors.Is(err, errNoSymbol) {
		t.Fatalf("a missing symbol: %v, want errNoSymbol", err)
	}
	// A module's function (IPv6 built as a module) has its module's name.
	if lo, hi, err := symbolRange(fixtures.Path("kallsyms"), "tcp_v6_rcv"); err != nil || lo != 0xffffffffc0a01000 || hi != 0xffffffffc0a01900 {
		t.Fatalf("module symbol: %#x-%#x, %v", lo, hi, err)
	}
	// kernel.kptr_restrict: every address 0. Not "no such function".
	hidden := "0000000000000000 T tcp_v4_rcv\n0000000000000000 T tcp_v4_do_rcv\n"
	if _, _, err := parseSymbolRange(strings.NewReader(hidden), "tcp_v4_rcv"); err == nil || errors.Is(err, errNoSymbol) || !strings.Contains(err.Error(), "kptr_restrict") {
		t.Fatalf("hidden addresses: %v", err)
	}
}

func TestSocketOwners(t *testing.T) {
	ls := []procListener{{inode: 12345}, {inode: 999}, {inode: 31337}}
	owners := socketOwners(ls, fixtures)
	if len(owners) != 2 || owners[12345] != 4242 || owners[999] != 4242 {
		t.Fatalf("owners %v", owners)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{RingbufSize: 5000},
		{RingbufSize: 2048},
		{Mode: "fast"},
		{RingbufSize: 4096, WakeupBytes: 8192},
		{PollInterval: time.Microsecond},
	} {
		if c.Validate() == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
}

func TestDecodeSeeds(t *testing.T) {
	a := bpfLwSeed{Key: bpfLwListenerKey{Netns: 5, Port: 80, Family: unix.AF_INET, Addr: [16]byte{127, 0, 0, 1}}, Ino: 42, Backlog: 511}
	b := bpfLwSeed{Key: bpfLwListenerKey{Netns: 5, Port: 443, Family: unix.AF_INET6}, Ino: 43, Backlog: 128}
	raw := make([]byte, 2*seedSize)
	*(*bpfLwSeed)(unsafe.Pointer(&raw[0])) = a
	*(*bpfLwSeed)(unsafe.Pointer(&raw[seedSize])) = b
	ls, err := decodeSeeds(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || ls[0].key != a.Key || ls[0].inode != 42 || ls[0].backlog != 511 || ls[1].key.Port != 443 || ls[1].backlog != 128 {
		t.Fatalf("got %+v", ls)
	}
	if _, err := decodeSeeds(raw[:seedSize+3]); err == nil {
		t.Fatal("a torn record was accepted")
	}
	if ls, err := decodeSeeds(nil); err != nil || len(ls) != 0 {
		t.Fatalf("empty: %v %v", ls, err)
	}
}
