// Package wait has the one context-aware sleep the updater's retry, backoff and poll loops share.
package wait

import (
	"context"
	"time"
)

// Sleep waits for d, or until ctx is done, whichever comes first; it returns ctx's error in the second
// case. A d of zero or less returns at once (with ctx's error, if any).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
