package hostapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// Client asks the host daemon over its socket.
type Client struct {
	// Socket is the socket's path (DefaultSocket on the host; sucjob.Socket in a SUC job).
	Socket string
	// Kind says who asks (ClientNodeAgent, ClientSUCJob, ClientCLI).
	Kind string
	// Timeout bounds one request without a deadline in its context (0: 10 minutes: a switch
	// downloads the UKI).
	Timeout time.Duration
}

// Do sends req (its Protocol set to ProtocolVersion) and returns the answer. A transport failure
// wraps ErrUnavailable; a refusal is an *Error (errors.Is matches the updater's sentinels) returned
// with the answer, whose Status may still be set.
func (c *Client) Do(ctx context.Context, req Request) (*Response, error) {
	req.Protocol = ProtocolVersion
	if req.Client == "" {
		req.Client = c.Kind
	}
	if _, ok := ctx.Deadline(); !ok {
		t := c.Timeout
		if t <= 0 {
			t = 10 * time.Minute
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("%w: send %s: %w", ErrUnavailable, req.Op, err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("%w: read the answer to %s: %w", ErrUnavailable, req.Op, err)
	}
	if resp.Protocol != ProtocolVersion {
		return &resp, fmt.Errorf("%w: the daemon answered protocol %d, this client speaks %d", ErrProtocol, resp.Protocol, ProtocolVersion)
	}
	if !resp.OK {
		if resp.Error == nil {
			resp.Error = &Error{Code: CodeInternal, Message: "refused without a reason"}
		}
		return &resp, fmt.Errorf("%s: %w", req.Op, resp.Error)
	}
	return &resp, nil
}

// Status asks for the host's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	resp, err := c.Do(ctx, Request{Op: OpStatus})
	if err != nil {
		return nil, err
	}
	if resp.Status == nil {
		return nil, fmt.Errorf("%w: status answered without a status", ErrProtocol)
	}
	return resp.Status, nil
}

// Stage asks to stage version (of channel, if set) in the background.
func (c *Client) Stage(ctx context.Context, version, channel string) (*Response, error) {
	return c.Do(ctx, Request{Op: OpStage, Version: version, Channel: channel})
}

// Switch asks to switch to the staged version (no reboot).
func (c *Client) Switch(ctx context.Context, version string) (*Response, error) {
	return c.Do(ctx, Request{Op: OpSwitch, Version: version})
}

// Reboot asks for the reboot into the switched version.
func (c *Client) Reboot(ctx context.Context) (*Response, error) {
	return c.Do(ctx, Request{Op: OpReboot})
}

// Install asks, for a SUC job, to install version: the daemon records it as requested and stages it
// in the background; the node agent switches and reboots it under the cluster reboot lock.
func (c *Client) Install(ctx context.Context, version string) (*Response, error) {
	return c.Do(ctx, Request{Op: OpInstall, Version: version})
}

// SnapshotEtcd asks to save the K3s datastore before this server switches to version.
func (c *Client) SnapshotEtcd(ctx context.Context, version string) (*Snapshot, error) {
	resp, err := c.Do(ctx, Request{Op: OpSnapshotEtcd, Version: version})
	if err != nil {
		return nil, err
	}
	if resp.Snapshot == nil {
		return nil, fmt.Errorf("%w: snapshot-etcd answered without a snapshot", ErrProtocol)
	}
	return resp.Snapshot, nil
}
