package views

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"text/tabwriter"
)

// WriteTable writes rows as the plain table of `top --once`: one line per
// listener, worst first, for scripts, pipes and tickets.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "LISTENER\tNETNS\tOWNER\tACCEPT/s\tP50\tP99\tQUEUE/BACKLOG\tAQFULL/s\tSYNQFULL/s\tOTHER/s\tCOOKIES/s\tRETX/s\tEMFILE/s\tENFILE/s\t")
	for i := range rows {
		r := &rows[i]
		aq := r.Drops["accept_queue_full_syn"] + r.Drops["accept_queue_full_ack"] + r.Drops["accept_queue_full_cookie_ack"]
		queue := fmt.Sprintf("%d/%d", r.AcceptQueue, r.Backlog)
		if r.RequestedBacklog > r.Backlog {
			queue += fmt.Sprintf(" (asked %d)", r.RequestedBacklog) // capped by somaxconn
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			listener(r.Addr, r.Port), r.Netns, r.Owner.String(), rate(r.AcceptedPerSecond),
			dur(r.P50Seconds), dur(r.P99Seconds), queue,
			rate(r.Rate(aq)), rate(r.Rate(r.Drops["syn_queue_full"])), rate(r.Rate(r.Drops["other"])),
			rate(r.Rate(r.Cookies)), rate(r.Rate(r.SynackRetrans)), rate(r.Rate(r.AcceptEMFILE)), rate(r.Rate(r.AcceptENFILE)))
	}
	return tw.Flush()
}

func listener(addr string, port uint16) string {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return addr + ":" + strconv.Itoa(int(port))
	}
	return netip.AddrPortFrom(a, port).String()
}

func rate(v float64) string {
	if v == 0 {
		return "0"
	}
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func dur(s *float64) string {
	switch {
	case s == nil:
		return "-"
	case *s < 1e-3:
		return strconv.FormatFloat(*s*1e6, 'f', 0, 64) + "us"
	case *s < 1:
		return strconv.FormatFloat(*s*1e3, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(*s, 'f', 2, 64) + "s"
}
