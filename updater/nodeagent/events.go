package nodeagent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/updater/rollout"
)

// postEvent posts e once per key: the agent remembers the keys it posted, and the event's name is
// derived from its key, so a restarted agent's repeat is refused by the API as already there (until
// the API's event TTL removed the first one).
func (a *Agent) postEvent(ctx context.Context, o *observed, e rollout.Event, now time.Time) error {
	if a.posted[e.Key] {
		return nil
	}
	var ref kube.ObjectReference
	switch e.Object {
	case rollout.OnLease:
		if o.lease == nil {
			return nil // no Lease to post on (it was never created)
		}
		ref = kube.LeaseRef(o.lease)
	default:
		ref = kube.NodeRef(o.node)
	}
	typ := kube.EventNormal
	if e.Warning {
		typ = kube.EventWarning
	}
	ev := kube.NewEvent(ref, typ, e.Reason, e.Message, a.NodeName, now)
	ev.Name = EventName(ref.Name, e.Key)
	if _, err := a.Kube.CreateEvent(ctx, ev); err != nil && !errors.Is(err, kube.ErrAlreadyExists) {
		return fmt.Errorf("post event %s: %w", e.Reason, err)
	}
	if a.posted == nil {
		a.posted = map[string]bool{}
	}
	a.posted[e.Key] = true
	return nil
}

// EventName is the name of the event with key about the object named object: the object's name and
// a hash of the key (a valid DNS subdomain, the same for the same key).
func EventName(object, key string) string {
	sum := sha256.Sum256([]byte(key))
	return object + "." + hex.EncodeToString(sum[:8])
}
