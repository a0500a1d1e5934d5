package main

import "testing"

func TestBootstrapMedianCI(t *testing.T) {
	v := []float64{1.01, 1.03, 0.99, 1.02, 1.00, 1.04, 1.02, 1.01}
	lo, hi := bootstrapMedianCI(v)
	m := median(v)
	if !(lo <= m && m <= hi) || lo < 0.99 || hi > 1.04 || lo == hi {
		t.Fatalf("median %.3f, interval [%.3f, %.3f]", m, lo, hi)
	}
	if lo2, hi2 := bootstrapMedianCI(v); lo2 != lo || hi2 != hi {
		t.Fatal("not reproducible")
	}
	// A wider spread gives a wider interval.
	w := []float64{0.8, 1.2, 0.9, 1.1, 1.0, 1.3, 0.7, 1.0}
	if wl, wh := bootstrapMedianCI(w); wh-wl <= hi-lo {
		t.Fatalf("spread %.3f not wider than %.3f", wh-wl, hi-lo)
	}
}

func TestMachineCPU(t *testing.T) {
	a, err := machineCPU()
	if err != nil || a <= 0 {
		t.Fatalf("%v, %v", a, err)
	}
	b, _ := machineCPU()
	if b < a {
		t.Fatalf("CPU time went back: %v then %v", a, b)
	}
}
