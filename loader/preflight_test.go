package loader

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestCheckPrivileges(t *testing.T) {
	all := uint64(0)
	for _, c := range Capabilities {
		all |= 1 << c.Bit
	}
	status := func(caps uint64) string { return fmt.Sprintf("Name:\tlistenwatch\nCapEff:\t%016x\n", caps) }
	if err := CheckPrivileges(status(all)); err != nil {
		t.Fatalf("exact set refused: %v", err)
	}
	if err := CheckPrivileges(status(0x000001ffffffffff)); err != nil {
		t.Fatalf("root refused: %v", err)
	}
	for _, c := range Capabilities {
		err := CheckPrivileges(status(all &^ (1 << c.Bit)))
		if !errors.Is(err, ErrPrivileges) || !strings.Contains(err.Error(), c.Name+" (") || strings.Contains(err.Error(), "\n") {
			t.Errorf("without %s: %v", c.Name, err)
		}
		for _, o := range Capabilities {
			if o.Name != c.Name && strings.Contains(err.Error(), o.Name+" (") {
				t.Errorf("without %s the error also names %s: %v", c.Name, o.Name, err)
			}
		}
	}
	if err := CheckPrivileges("no caps line"); err != nil {
		t.Errorf("unreadable status is not a verdict: %v", err)
	}
}
