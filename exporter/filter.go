package exporter

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/listenwatch/listenwatch/events"
)

// Filter chooses which listeners get series, so an operator pays only for
// what they watch. The kernel side still counts every listener (the
// filter is for series, not for correctness); how many were left out is
// exported (listenwatch_listeners{state="filtered"}), never silent.
type Filter struct {
	Ports []PortRange // empty: every port
	// Kubernetes namespaces of the listener's pod, as regular expressions
	// anchored at both ends; a listener outside any pod has namespace "".
	IncludeNamespaces, ExcludeNamespaces *regexp.Regexp
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

// ParsePorts reads "80,443,8000-8100".
func ParsePorts(s string) ([]PortRange, error) {
	var out []PortRange
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil || a == 0 {
			return nil, fmt.Errorf("%q: want ports 1-65535 as 80,443,8000-8100", part)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 16); err != nil || b < a {
				return nil, fmt.Errorf("%q: want a range low-high with low <= high", part)
			}
		}
		out = append(out, PortRange{uint16(a), uint16(b)})
	}
	return out, nil
}

// ParseNamespaces compiles a namespace pattern, anchored at both ends.
func ParseNamespaces(pattern string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + pattern + ")$")
	if err != nil {
		return nil, fmt.Errorf("%q: %v", pattern, err)
	}
	return re, nil
}

func (f *Filter) port(k events.ListenerKey) bool {
	if len(f.Ports) == 0 {
		return true
	}
	for _, r := range f.Ports {
		if k.Port >= r.Lo && k.Port <= r.Hi {
			return true
		}
	}
	return false
}

// byNamespace reports whether the filter needs the listener's pod.
func (f *Filter) byNamespace() bool { return f.IncludeNamespaces != nil || f.ExcludeNamespaces != nil }

func (f *Filter) namespace(ns string) bool {
	if f.IncludeNamespaces != nil && !f.IncludeNamespaces.MatchString(ns) {
		return false
	}
	return f.ExcludeNamespaces == nil || !f.ExcludeNamespaces.MatchString(ns)
}
