package tufrepo

import (
	"crypto/rand"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/tufrepo/fixture"
)

// BenchmarkPublish publishes 500 versions into one repository and reports, at 100, 200, ... 500
// versions, the mean time of the last 100 publishes, the time of a fresh go-tuf client's refresh over
// HTTP on 127.0.0.1, and the size of the targets metadata. Run it with
//
//	go test -run '^$' -bench BenchmarkPublish -benchtime 1x ./builder/tufrepo/
func BenchmarkPublish(b *testing.B) {
	const total, step = 500, 100
	src := b.TempDir()
	folders := make([]string, total)
	for i := range folders {
		folders[i] = filepath.Join(src, fmt.Sprint(i))
		if _, err := fixture.UpdateFolder(folders[i], "basalt", fmt.Sprintf("1.%d.0", i), 1); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		ks := newKeys(b, 1, 1)
		dir := filepath.Join(b.TempDir(), "repo")
		now := t0
		r, err := Init(dir, Options{Keys: ks, Now: func() time.Time { return now }, Rand: rand.Reader}, Expiry{})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(Handler(dir))
		root1, err := os.ReadFile(filepath.Join(dir, MetadataDir, FirstRootFile))
		if err != nil {
			b.Fatal(err)
		}
		var spent time.Duration
		for i, f := range folders {
			now = now.Add(time.Minute)
			start := time.Now()
			if _, err := r.Publish(f, "stable"); err != nil {
				b.Fatal(err)
			}
			spent += time.Since(start)
			if (i+1)%step != 0 {
				continue
			}
			start = time.Now()
			if _, err := newClient(b, srv.URL, root1, now, ""); err != nil {
				b.Fatal(err)
			}
			refresh := time.Since(start)
			n := i + 1
			b.ReportMetric(float64(spent.Microseconds())/1000/step, fmt.Sprintf("ms/publish@%d", n))
			b.ReportMetric(float64(refresh.Microseconds())/1000, fmt.Sprintf("ms/refresh@%d", n))
			b.ReportMetric(float64(len(r.targetsRaw))/1024, fmt.Sprintf("KiB-targets@%d", n))
			spent = 0
		}
		srv.Close()
		r.Close()
	}
}

// BenchmarkPublishChannels publishes 300 versions alternately into two channels of a repository in
// the delegated layout and reports, every 50 versions per channel, the mean time of the last publishes,
// the size of a channel's role and of the top-level targets, and the time of a fresh go-tuf client's
// refresh plus the load of one channel's role over HTTP on 127.0.0.1. Run it with
//
//	go test -run '^$' -bench BenchmarkPublishChannels -benchtime 1x ./builder/tufrepo/
func BenchmarkPublishChannels(b *testing.B) {
	const perChannel, step = 150, 50
	channels := []string{"stable", "beta"}
	src := b.TempDir()
	folders := make([]string, perChannel)
	for i := range folders {
		folders[i] = filepath.Join(src, fmt.Sprint(i))
		if _, err := fixture.UpdateFolder(folders[i], "basalt", fmt.Sprintf("1.%d.0", i), 1); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		ks := newKeys(b, 1, 1)
		dir := filepath.Join(b.TempDir(), "repo")
		now := t0
		r, err := Init(dir, Options{Keys: ks, Now: func() time.Time { return now }, Rand: rand.Reader}, Expiry{})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(Handler(dir))
		root1, err := os.ReadFile(filepath.Join(dir, MetadataDir, FirstRootFile))
		if err != nil {
			b.Fatal(err)
		}
		var spent time.Duration
		for i, f := range folders {
			for _, ch := range channels {
				now = now.Add(time.Minute)
				start := time.Now()
				if _, err := r.Publish(f, ch); err != nil {
					b.Fatal(err)
				}
				spent += time.Since(start)
			}
			if (i+1)%step != 0 {
				continue
			}
			start := time.Now()
			cl, err := newClient(b, srv.URL, root1, now, "")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := cl.up.GetTargetInfo(ManifestTarget("stable", "basalt", "1.0.0")); err != nil {
				b.Fatal(err)
			}
			refresh := time.Since(start)
			n := i + 1
			b.ReportMetric(float64(spent.Microseconds())/1000/float64(step*len(channels)), fmt.Sprintf("ms/publish@%dx2", n))
			b.ReportMetric(float64(refresh.Microseconds())/1000, fmt.Sprintf("ms/refresh+role@%dx2", n))
			b.ReportMetric(float64(len(r.roles[ChannelRole("stable")].raw))/1024, fmt.Sprintf("KiB-role@%dx2", n))
			b.ReportMetric(float64(len(r.targetsRaw))/1024, fmt.Sprintf("KiB-targets@%dx2", n))
			spent = 0
		}
		srv.Close()
		r.Close()
	}
}
