package loader

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/listenwatch/listenwatch/events"
	"golang.org/x/sys/unix"
)

// FuzzDecode: any bytes from the ring buffer decode or fail with
// ErrShortRecord, never panic; a full-length record always decodes.
func FuzzDecode(f *testing.F) {
	f.Add(record(bpfLwEvent{T_acc: 1, Listener: bpfLwListenerKey{Family: unix.AF_INET, Port: 80}}))
	f.Add(record(bpfLwEvent{T_synack: 1, T_est: 2, T_acc: 3, Listener: bpfLwListenerKey{Family: unix.AF_INET6}}))
	f.Add([]byte{})
	f.Add(make([]byte, EventSize+7))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var (
			c events.Conn
			d events.Drop
		)
		if k, err := RecordKind(raw); err == nil && k == events.KindDrop {
			if err := DecodeDrop(raw, &d); err != nil || d.Count == 0 || d.Reason >= events.DropReasons {
				t.Fatalf("drop record: %+v, %v", d, err)
			}
		}
		err := Decode(raw, &c)
		switch {
		case len(raw) >= EventSize && err != nil:
			t.Fatalf("%d bytes: %v", len(raw), err)
		case len(raw) < EventSize && !errors.Is(err, ErrShortRecord):
			t.Fatalf("%d bytes: %v, want ErrShortRecord", len(raw), err)
		}
		if err == nil && (!c.Client.Addr().IsValid() || !c.Listener.Addr.IsValid()) {
			t.Fatalf("decoded invalid addresses: %+v", c)
		}
	})
}

// FuzzParseProcTCP: /proc/net/tcp text never panics the parser, and what
// it returns are listeners of a known family.
func FuzzParseProcTCP(f *testing.F) {
	for _, s := range []string{
		"  sl  local_address rem_address   st\n   0: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 12345\n",
		"  sl  local\n   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 999\n",
		"", "\n\n", "header\n 0: zz:1 0:0 0A a b c d e f\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ls, _ := parseProcTCP(text, 1)
		for _, l := range ls {
			if l.key.Family != unix.AF_INET && l.key.Family != unix.AF_INET6 {
				t.Fatalf("family %d from %q", l.key.Family, text)
			}
		}
	})
}

// FuzzParseSymbolRange: kallsyms text never panics; a range found is
// ordered.
func FuzzParseSymbolRange(f *testing.F) {
	f.Add("ffffffff81a0b2c0 T tcp_rcv_state_process\nffffffff81a0c9a0 T tcp_finish_connect\n")
	f.Add("0 T tcp_rcv_state_process\n")
	f.Add("zz t tcp_rcv_state_process\n")
	f.Fuzz(func(t *testing.T, text string) {
		lo, hi, err := parseSymbolRange(strings.NewReader(text), "tcp_rcv_state_process")
		if err == nil && (lo == 0 || hi <= lo) {
			t.Fatalf("range %#x-%#x from %q", lo, hi, text)
		}
	})
}

// FuzzCheckPrivileges: any /proc/self/status text gives nil or the one
// privileges error, in one line.
func FuzzCheckPrivileges(f *testing.F) {
	f.Add("Name:\tlistenwatch\nCapEff:\t000001ffffffffff\n")
	f.Add("CapEff:\t0000000000000000\n")
	f.Add("CapEff: zz\n")
	f.Fuzz(func(t *testing.T, status string) {
		err := CheckPrivileges(status)
		if err != nil && (!errors.Is(err, ErrPrivileges) || bytes.ContainsRune([]byte(err.Error()), '\n')) {
			t.Fatalf("%q: %v", status, err)
		}
	})
}
