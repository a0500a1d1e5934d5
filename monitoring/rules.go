// Package monitoring holds what listenwatch ships for Prometheus and
// Grafana, defined once in Go: the recording and alerting rules (written
// as a plain rules file and as a PrometheusRule, from the same values) and
// the dashboard (built with Grafana's typed builder). cmd/mkmonitoring
// writes them under deploy/; a test fails when the committed files differ.
package monitoring

import (
	"fmt"
	"strings"
)

// L is the label set that names one listener on one agent: every rule
// keeps it, so that alerts say which listener on which node.
const L = "cluster, job, instance, netns, addr, port"

// RunbookBase is where the alerts' runbook_url anchors point: one section
// per alert in docs/oncall.md, checked by a test.
const RunbookBase = "https://github.com/listenwatch/listenwatch/blob/main/docs/oncall.md"

// Rule is one recording or alerting rule, in Prometheus's rule-file form.
type Rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Group is a rule group.
type Group struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []Rule `json:"rules"`
}

// RuleFile is a Prometheus rules file.
type RuleFile struct {
	Groups []Group `json:"groups"`
}

// Anchor is the docs/oncall.md anchor of an alert's section: GitHub's
// slug of the heading "## <alert>".
func Anchor(alert string) string { return strings.ToLower(alert) }

// withPod adds the listener's pod (namespace, pod) to a per-listener
// vector, keeping the listeners whose pod is not known (no owner found):
// an alert must not vanish for want of a name.
func withPod(v string) string {
	return fmt.Sprintf("(\n  (%s)\n  * on (%s) group_left (namespace, pod) listenwatch:listener_pod:info\n)\nor on (%s)\n  (%s)",
		v, L, L, v)
}

const podText = `{{ if $labels.pod }}pod {{ $labels.namespace }}/{{ $labels.pod }}{{ else }}owner unknown (see listenwatch_listener_info){{ end }}`

// value is the alert's value with two decimals (humanize would write 0.5
// as "500m").
const value = `{{ $value | printf "%.2f" }}`

const listenerText = `{{ $labels.addr }}:{{ $labels.port }} (netns {{ $labels.netns }}) on {{ $labels.instance }}`

func alert(name, severity, forDur, expr, summary, description string) Rule {
	return Rule{
		Alert: name, Expr: expr, For: forDur,
		Labels: map[string]string{"severity": severity},
		Annotations: map[string]string{
			"summary":     summary,
			"description": description,
			"runbook_url": RunbookBase + "#" + Anchor(name),
		},
	}
}

// Rules are the recording and alerting rules.
func Rules() RuleFile {
	return RuleFile{Groups: []Group{
		{Name: "listenwatch.rules", Rules: []Rule{
			{
				// One series per listener: its pod, for joins. Several
				// owners of one listener share a pod; topk keeps one if
				// they do not (hostNetwork), so a join never fails.
				Record: "listenwatch:listener_pod:info",
				Expr:   fmt.Sprintf("topk by (%s) (1, max by (%s, namespace, pod) (listenwatch_listener_info))", L, L),
			},
			{
				Record: "listenwatch:listener_drops:rate5m",
				Expr:   fmt.Sprintf("sum by (%s, reason) (rate(listenwatch_listener_drops_total[5m]))", L),
			},
			{
				Record: "listenwatch:listener_syn_to_accept_seconds:p99_5m",
				Expr:   fmt.Sprintf("histogram_quantile(0.99, sum by (%s, le) (rate(listenwatch_syn_to_accept_seconds_bucket[5m])))", L),
			},
			{
				// The accept-queue wait's p99 from its own histogram
				// (--metrics.latency-split), else SYN->accept's, which
				// bounds it from above.
				Record: "listenwatch:listener_accept_queue_wait_seconds:p99_5m",
				Expr:   fmt.Sprintf("histogram_quantile(0.99, sum by (%s, le) (rate(listenwatch_accept_queue_wait_seconds_bucket[5m])))\nor on (%s)\n  listenwatch:listener_syn_to_accept_seconds:p99_5m", L, L),
			},
			{
				Record: "listenwatch:listener_accept_queue_fill:ratio",
				Expr:   "listenwatch_listener_accept_queue_length / (listenwatch_listener_backlog > 0)",
			},
		}},
		{Name: "listenwatch.alerts", Rules: []Rule{
			alert("ListenwatchAcceptQueueOverflow", "warning", "2m",
				withPod(fmt.Sprintf(`sum by (%s) (rate(listenwatch_listener_drops_total{reason=~"accept_queue_full_.*"}[5m])) > 0`, L)),
				"Accept queue of "+listenerText+" overflows",
				"The accept queue of "+listenerText+", "+podText+", is full: "+value+" connections/s refused. "+
					"The application accepts slower than connections arrive, or its backlog is small. "+
					"Knob: the listen() backlog and net.core.somaxconn (the effective backlog is the smaller: listenwatch_listener_backlog), or accept faster."),
			alert("ListenwatchSYNQueueOverflow", "warning", "2m",
				withPod(fmt.Sprintf(`sum by (%s) (rate(listenwatch_listener_drops_total{reason="syn_queue_full"}[5m])) > 0`, L)),
				"SYN queue of "+listenerText+" drops SYNs",
				"The SYN queue of "+listenerText+", "+podText+", is full and SYN cookies are off: "+value+" SYNs/s dropped. "+
					"Knob: net.ipv4.tcp_syncookies=1, and the listen() backlog (it bounds the SYN queue); look for a SYN flood."),
			alert("ListenwatchSYNFloodSuspected", "warning", "5m",
				withPod(fmt.Sprintf(`sum by (%s) (rate(listenwatch_listener_syncookies_sent_total[5m])) > 1`, L)),
				"SYN cookies sent by "+listenerText,
				listenerText+", "+podText+", answers "+value+" SYNs/s with SYN cookies: its SYN queue is full, a SYN flood or a backlog too small for the SYN rate. "+
					"Connections made from cookies lose TCP options (window scaling, SACK). Knob: the listen() backlog, net.ipv4.tcp_max_syn_backlog; find the sources upstream."),
			alert("ListenwatchAcceptFailing", "critical", "1m",
				withPod(fmt.Sprintf(`sum by (%s, errno) (rate(listenwatch_listener_accept_errors_total[5m])) > 0`, L)),
				"accept() fails with {{ $labels.errno }} on "+listenerText,
				"accept() on "+listenerText+", "+podText+", fails with {{ $labels.errno }} ("+value+"/s): the process is out of file descriptors and clients wait in the accept queue. "+
					"Knob: EMFILE: the process's RLIMIT_NOFILE (LimitNOFILE=, ulimit -n; compare listenwatch_process_open_fds with listenwatch_process_max_fds), or an fd leak; ENFILE: fs.file-max."),
			alert("ListenwatchAcceptQueueNearlyFull", "warning", "10m",
				withPod("listenwatch:listener_accept_queue_fill:ratio > 0.8"),
				"Accept queue of "+listenerText+" above 80% of its backlog",
				"The accept queue of "+listenerText+", "+podText+", has stayed above 80% of its backlog ({{ $value | humanizePercentage }}): the next burst overflows. "+
					"Knob: the listen() backlog and net.core.somaxconn, or accept faster."),
			alert("ListenwatchSlowAccept", "warning", "10m",
				withPod("listenwatch:listener_accept_queue_wait_seconds:p99_5m > 0.5"),
				"Connections wait in the accept queue of "+listenerText,
				"The p99 accept-queue wait of "+listenerText+", "+podText+", is {{ $value | humanizeDuration }} (SYN->accept when the agent runs without --metrics.latency-split): "+
					"the handshake is done and the application does not call accept() in time. Knob: the application's accept loop (CPU, GC pauses, locks, worker count)."),
			alert("ListenwatchLostEvents", "warning", "5m",
				`sum by (cluster, job, instance) (rate(listenwatch_ringbuf_lost_events_total[5m])) > 0`,
				"listenwatch on {{ $labels.instance }} loses events",
				"The agent on {{ $labels.instance }} loses "+value+" events/s (ring buffer full): latency histograms are incomplete; drop counts stay exact. "+
					"Knob: --ringbuf-size, or the agent's CPU limit."),
			alert("ListenwatchAgentDown", "critical", "5m",
				`up{job=~".*listenwatch.*"} == 0`,
				"listenwatch on {{ $labels.instance }} is down",
				"Prometheus cannot scrape the listenwatch agent on {{ $labels.instance }}: that node's listeners are not watched. "+
					"Knob: kubectl -n listenwatch get pods -o wide; the agent's logs say why it stopped (privileges, BTF, the metrics port)."),
			alert("ListenwatchStageDegraded", "warning", "10m",
				`listenwatch_hook_info{mode="none"} == 1`,
				"listenwatch on {{ $labels.instance }} runs without its {{ $labels.stage }} stage",
				"The {{ $labels.stage }} stage of the agent on {{ $labels.instance }} is not attached (mode none): what it sees is missing from every listener of that node. "+
					"Knob: listenwatch doctor on the node says why (kernel, BTF, privileges)."),
		}},
	}}
}
