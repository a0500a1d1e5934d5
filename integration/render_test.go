package integration

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/monitoring"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// renderedPanels are the dashboard panels drawn for the README: the
// questions an on-call engineer asks first.
var renderedPanels = []string{
	"Drops by reason",
	"SYN -> accept p50 / p90 / p99",
	"Accept queue vs backlog",
	"Network or application: mean handshake vs accept-queue wait",
}

var palette = []color.Color{
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

// legend fills a Grafana legend format ({{label}}) from a series' labels.
// Labels a series lacks (no pod names without a container runtime) and
// the instance (one agent here) are left out.
func legend(format string, m map[string]string) string {
	out := strings.ReplaceAll(format, "({{instance}})", "")
	for k, v := range m {
		out = strings.ReplaceAll(out, "{{"+k+"}}", v)
	}
	out = regexp.MustCompile(`\{\{\w+\}\}`).ReplaceAllString(out, "")
	return strings.Join(strings.Fields(strings.ReplaceAll(out, " / ", " ")), " ")
}

// renderDashboard draws the key panels from the same queries, evaluated by
// the test's Prometheus, into a PNG: a rendering of the dashboard's
// queries, not a Grafana screenshot.
func renderDashboard(t *testing.T, prom *promServer, instance string, from time.Time, ports map[string]bool, path string) {
	t.Helper()
	dash, err := monitoring.DashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	legends, err := monitoring.Legends(dash)
	if err != nil {
		t.Fatal(err)
	}
	panels, err := monitoring.Panels(dash)
	if err != nil {
		t.Fatal(err)
	}
	byTitle := map[string]monitoring.Panel{}
	for _, p := range panels {
		byTitle[p.Title] = p
	}
	var plots []*plot.Plot
	for _, title := range renderedPanels {
		p, ok := byTitle[title]
		if !ok {
			t.Fatalf("no panel %q in the dashboard", title)
		}
		pl := plot.New()
		pl.Title.Text = title
		pl.X.Label.Text = "seconds"
		pl.Legend.Top = true
		pl.Legend.TextStyle.Font.Size = vg.Points(7)
		n := 0
		for qi, q := range p.Queries {
			res, err := prom.queryRange(substitute(q, instance), from)
			if err != nil {
				t.Fatalf("%s: %v", title, err)
			}
			sort.Slice(res, func(i, j int) bool { return fmt.Sprint(res[i].Metric) < fmt.Sprint(res[j].Metric) })
			for _, r := range res {
				if !ports[r.Metric["port"]] || n >= len(palette) {
					continue // the test's listeners only, a readable few
				}
				var xy plotter.XYs
				for _, v := range r.Values {
					ts, _ := v[0].(float64)
					s, _ := v[1].(string)
					y, err := strconv.ParseFloat(s, 64)
					if err != nil || math.IsNaN(y) || math.IsInf(y, 0) {
						continue
					}
					xy = append(xy, plotter.XY{X: ts - float64(from.Unix()), Y: y})
				}
				flat := true
				for _, p := range xy {
					flat = flat && p.Y == 0
				}
				if len(xy) == 0 || flat {
					continue // a line at 0 says nothing a missing one does not
				}
				line, err := plotter.NewLine(xy)
				if err != nil {
					t.Fatal(err)
				}
				line.Color = palette[n]
				line.Width = vg.Points(1.5)
				pl.Add(line)
				pl.Legend.Add(legend(legends[title][qi], r.Metric), line)
				n++
			}
		}
		plots = append(plots, pl)
	}
	const w, h = 30 * vg.Centimeter, 20 * vg.Centimeter
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 2, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	grid := [][]*plot.Plot{{plots[0], plots[1]}, {plots[2], plots[3]}}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j := range grid[i] {
			grid[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		t.Fatal(err)
	}
}
