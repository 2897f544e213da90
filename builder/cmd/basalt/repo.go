package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/builder/tufrepo"
	"github.com/basalt-os/basalt/keys"
)

func newRepoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repo",
		Short: "Create and maintain the TUF repository devices update from",
		Long: `repo creates and maintains a TUF repository (go-tuf v2 metadata, consistent snapshots):

  REPO/metadata/   N.root.json (every root version), N.targets.json, N.snapshot.json, timestamp.json,
                   N.channel-<channel>.json (each channel's delegated targets role)
  REPO/targets/    <channel>/<name>/<version>/<sha256>.<file>
  REPO/staged/     a root waiting for signatures (never served)

Serve REPO/metadata and REPO/targets from any static file host (a CDN, S3, nginx) as <base>/metadata
and <base>/targets. Devices start from REPO/metadata/1.root.json, baked into the image (trust.root in
the image config).

Publishing an update: 'basalt publish'. Lifecycle: 'refresh' from cron, 'rotate' a role's key,
'renew-root' before the root expires, 'sign-root' for each root key holder, 'prune' old versions,
'verify' the whole repository as a device would, 'migrate' channels of an older repository into
delegated roles.`,
	}
	cmd.AddCommand(newRepoInitCmd(), newRepoRefreshCmd(), newRepoRotateCmd(), newRepoRenewRootCmd(),
		newRepoSignRootCmd(), newRepoPruneCmd(), newRepoVerifyCmd(), newRepoServeCmd(), newRepoStatusCmd(),
		newRepoMigrateCmd())
	return cmd
}

// repoFlags are the flags of commands that open a repository.
type repoFlags struct {
	repo, keys string
}

func (f *repoFlags) add(cmd *cobra.Command, keysRequired bool) {
	cmd.Flags().StringVar(&f.repo, "repo", "", "repository folder (required)")
	cmd.MarkFlagRequired("repo")
	help := "key folder (only the private keys this command signs with need to be in it)"
	if keysRequired {
		help += " (required)"
	}
	cmd.Flags().StringVar(&f.keys, "keys", "", help)
	if keysRequired {
		cmd.MarkFlagRequired("keys")
	}
}

func (f *repoFlags) options() (tufrepo.Options, error) {
	o := tufrepo.Options{Now: time.Now, Rand: rand.Reader}
	if f.keys != "" {
		ks, err := keys.Open(f.keys)
		if err != nil {
			return o, err
		}
		o.Keys = ks
	}
	return o, nil
}

func (f *repoFlags) open() (*tufrepo.Repo, error) {
	o, err := f.options()
	if err != nil {
		return nil, err
	}
	return tufrepo.Open(f.repo, o)
}

// expiryFlags are the --expires-ROLE flags.
type expiryFlags struct{ root, targets, snapshot, timestamp string }

func (f *expiryFlags) add(cmd *cobra.Command) {
	d := tufrepo.DefaultExpiry
	cmd.Flags().StringVar(&f.root, "expires-root", days(d.Root), "root metadata lifetime (renew it with renew-root before it ends)")
	cmd.Flags().StringVar(&f.targets, "expires-targets", days(d.Targets), "targets metadata lifetime (re-signed by publish, prune and refresh)")
	cmd.Flags().StringVar(&f.snapshot, "expires-snapshot", days(d.Snapshot), "snapshot metadata lifetime")
	cmd.Flags().StringVar(&f.timestamp, "expires-timestamp", days(d.Timestamp), "timestamp metadata lifetime: run 'basalt repo refresh' more often than this")
}

func days(d tufrepo.Duration) string {
	if t := time.Duration(d); t%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", t/(24*time.Hour))
	}
	return time.Duration(d).String()
}

func (f *expiryFlags) expiry() (tufrepo.Expiry, error) {
	var e tufrepo.Expiry
	for _, p := range []struct {
		name, v string
		dst     *tufrepo.Duration
	}{{"root", f.root, &e.Root}, {"targets", f.targets, &e.Targets}, {"snapshot", f.snapshot, &e.Snapshot}, {"timestamp", f.timestamp, &e.Timestamp}} {
		d, err := tufrepo.ParseDuration(p.v)
		if err != nil {
			return e, usageError{fmt.Errorf("--expires-%s: %w", p.name, err)}
		}
		*p.dst = tufrepo.Duration(d)
	}
	return e, nil
}

func newRepoInitCmd() *cobra.Command {
	var f repoFlags
	var ef expiryFlags
	var layout string
	cmd := &cobra.Command{
		Use:   "init --repo REPO --keys KEYS",
		Short: "Create a repository: root version 1, empty targets, snapshot, timestamp",
		Long: `init creates a repository signed with the key folder's keys: root version 1 (the folder's root keys
and threshold; the threshold's private root keys must be present), one key each for targets,
snapshot and timestamp, consistent snapshots on, and no targets yet.

Each channel's targets go into a delegated role of their own ("channel-<channel>", signed with the
targets key), so the metadata a device downloads grows with its channel only. --layout top-level
keeps every channel in the top-level targets instead, for fleets whose devices still run an updater
that predates delegated roles (move channels later with 'basalt repo migrate').

REPO/metadata/1.root.json is the root of trust to bake into images (trust.root in the image config).
Lifetimes take days (90d) or Go durations (36h).`,
		Example: `  basalt repo init --repo repo --keys keys
  basalt repo init --repo repo --keys keys --expires-timestamp 6h --expires-root 730d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exp, err := ef.expiry()
			if err != nil {
				return err
			}
			if err := tufrepo.ValidateLayout(layout); err != nil {
				return usageError{fmt.Errorf("--layout: %w", err)}
			}
			o, err := f.options()
			if err != nil {
				return err
			}
			r, err := tufrepo.InitWith(f.repo, o, tufrepo.InitOptions{Expiry: exp, Layout: layout})
			if err != nil {
				return err
			}
			defer r.Close()
			loggerFrom(cmd.Context()).Info("repository created", "repo", f.repo, "layout", layout)
			fmt.Fprintf(cmd.OutOrStdout(), "repository %s created (%s layout)\n  trusted root for images: %s\n",
				f.repo, layout, filepath.Join(f.repo, tufrepo.MetadataDir, tufrepo.FirstRootFile))
			return printExpiry(cmd.OutOrStdout(), r)
		},
	}
	f.add(cmd, true)
	ef.add(cmd)
	cmd.Flags().StringVar(&layout, "layout", tufrepo.LayoutDelegated, "where channels' targets go: delegated (a role per channel) or top-level (readable by updaters that predate delegated roles)")
	return cmd
}

func newRepoRefreshCmd() *cobra.Command {
	var f repoFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "refresh --repo REPO --keys KEYS",
		Short: "Re-sign the timestamp (and snapshot/targets when due) before they expire; for cron",
		Long: `refresh re-signs timestamp.json every time, and the snapshot and targets metadata when less than
half their lifetime is left (or with --force), each channel's delegated role likewise. Run it from cron more often than the timestamp
lifetime. With only the timestamp key present it re-signs the timestamp and warns about the rest.
A staged root whose signatures are complete is published first.`,
		Example: `  basalt repo refresh --repo repo --keys keys
  # crontab: every 6 hours on a host that only holds the timestamp key
  0 */6 * * * basalt repo refresh --repo /srv/repo --keys /etc/basalt/ts-keys`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			res, err := r.Refresh(tufrepo.RefreshOptions{Force: force})
			if err != nil {
				return err
			}
			log := loggerFrom(cmd.Context())
			for _, w := range res.Warnings {
				log.Warn(w)
			}
			out := cmd.OutOrStdout()
			if res.Root != 0 {
				fmt.Fprintf(out, "root version %d published\n", res.Root)
			}
			for _, p := range []struct {
				role string
				v    int64
			}{{"targets", res.Targets}, {"snapshot", res.Snapshot}, {"timestamp", res.Timestamp}} {
				if p.v != 0 {
					fmt.Fprintf(out, "%s re-signed: version %d\n", p.role, p.v)
				}
			}
			roles := make([]string, 0, len(res.Roles))
			for role := range res.Roles {
				roles = append(roles, role)
			}
			sort.Strings(roles)
			for _, role := range roles {
				fmt.Fprintf(out, "%s re-signed: version %d\n", role, res.Roles[role])
			}
			return printExpiry(out, r)
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVar(&force, "force", false, "re-sign targets and snapshot too, whatever their expiry")
	return cmd
}

func newRepoRotateCmd() *cobra.Command {
	var f repoFlags
	var alg string
	var rootKeys, rootThreshold int
	cmd := &cobra.Command{
		Use:   "rotate ROLE --repo REPO --keys KEYS",
		Short: "Replace a role's key (root, targets, snapshot or timestamp) with a new one",
		Long: `rotate generates new keys for ROLE into the key folder and stages root version N+1 that trusts them
instead of the old ones (for root: all root keys are replaced). The staged root is signed with every
old and new root key in the key folder; TUF requires the threshold of the current root keys and the
threshold of the new ones. When both are met it is published at once, with the role's metadata
re-signed by the new key (and the old one, when present, so clients of either root accept it).
Otherwise each root key holder runs 'basalt repo sign-root'.`,
		Example: `  basalt repo rotate timestamp --repo repo --keys keys
  basalt repo rotate root --repo repo --keys keys --root-keys 5 --root-threshold 3`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"root", "targets", "snapshot", "timestamp"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "root", "targets", "snapshot", "timestamp":
			default:
				return usageError{fmt.Errorf("role %q: want root, targets, snapshot or timestamp", args[0])}
			}
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			st, err := r.Rotate(args[0], tufrepo.RotateOptions{Algorithm: keys.Algorithm(alg), RootKeys: rootKeys, RootThreshold: rootThreshold})
			if err != nil {
				return err
			}
			return printRootStatus(cmd, st)
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringVar(&alg, "algorithm", "", "algorithm of the new keys: ed25519 or ecdsa-p256 (default: as the current key)")
	cmd.Flags().IntVar(&rootKeys, "root-keys", 0, "root rotation: number of new root keys (default: as now)")
	cmd.Flags().IntVar(&rootThreshold, "root-threshold", 0, "root rotation: new root threshold (default: as now)")
	return cmd
}

func newRepoRenewRootCmd() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "renew-root --repo REPO --keys KEYS",
		Short: "Stage root version N+1 with the same keys and a new expiry",
		Long: `renew-root stages the next root version with the same keys and a fresh expiry, signed with the root
keys present in the key folder. It is published when the root threshold has signed; other holders
add their signatures with 'basalt repo sign-root'. An expired root makes devices refuse the
repository: renew it well before (publish and refresh warn 30 days ahead).`,
		Example: `  basalt repo renew-root --repo repo --keys keys`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			st, err := r.RenewRoot()
			if err != nil {
				return err
			}
			return printRootStatus(cmd, st)
		},
	}
	f.add(cmd, true)
	return cmd
}

func newRepoSignRootCmd() *cobra.Command {
	var f repoFlags
	var keyFile string
	cmd := &cobra.Command{
		Use:   "sign-root --repo REPO --key KEYFILE",
		Short: "Add one root key's signature to the staged root (multi-party signing)",
		Long: `sign-root adds the signature of one root key (a private key file, mode 0600) to the staged root
(REPO/staged/root.json, made by rotate or renew-root). Each holder runs it in turn, on a copy of the
repository or the repository itself. When the thresholds of the current and the new root keys are
met the root is published - if the metadata of a rotated role must be re-signed and its new key is
not in --keys, the signatures are kept and 'basalt repo refresh' on the publishing host finishes.`,
		Example: `  basalt repo sign-root --repo repo --key /media/token/root-2.key
  basalt repo sign-root --repo repo --key keys/root-3.key --keys keys`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, id, err := keys.LoadTUFSigner(keyFile)
			if err != nil {
				return err
			}
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			st, err := r.SignRoot(s)
			if err != nil {
				return err
			}
			loggerFrom(cmd.Context()).Info("root signed", "key", id[:16], "version", st.Version)
			return printRootStatus(cmd, st)
		},
	}
	f.add(cmd, false)
	cmd.Flags().StringVar(&keyFile, "key", "", "private root key file to sign with (required)")
	cmd.MarkFlagRequired("key")
	return cmd
}

func newRepoPruneCmd() *cobra.Command {
	var f repoFlags
	var keep int
	cmd := &cobra.Command{
		Use:   "prune --repo REPO --keys KEYS --keep N",
		Short: "Keep the newest N versions per channel; delete the rest and unreferenced files",
		Long: `prune keeps the newest N versions of every channel (and OS name), removes the others and their
deltas from the metadata (re-signing the channels' roles or the top-level targets, snapshot and
timestamp), then deletes target files nothing
refers to (also leftovers of failed publishes) and targets/snapshot metadata older than the previous
version. Root versions are never deleted. Pruning keeps the targets metadata - which every device
downloads on every check - small.`,
		Example: `  basalt repo prune --repo repo --keys keys --keep 3`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keep < 1 {
				return usageError{fmt.Errorf("--keep %d: want at least 1", keep)}
			}
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			res, err := r.Prune(keep)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, v := range res.Versions {
				fmt.Fprintf(out, "removed %s %s from %s\n", v.Name, v.Version, v.Channel)
			}
			fmt.Fprintf(out, "deleted %d target files and %d old metadata files\n", res.Files, res.Metadata)
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().IntVar(&keep, "keep", 0, "versions to keep per channel (required)")
	cmd.MarkFlagRequired("keep")
	return cmd
}

func newRepoVerifyCmd() *cobra.Command {
	var repo, url, root, at string
	cmd := &cobra.Command{
		Use:   "verify (--repo REPO | --url URL) [--root ROOT.json]",
		Short: "Walk the repository with go-tuf's client and check every target",
		Long: `verify does what a device does, with go-tuf's own client: starting from a trusted root (by default
REPO/metadata/1.root.json) it walks every root version, then timestamp, snapshot and targets, and
downloads every target, checking length and hashes. It also checks Basalt's conventions: each
manifest parses, equals the manifest in its target's custom field, and the UKI, payload and deltas'
files it names are targets with the sizes and sha256 of the manifest and its delta references.
Channels in delegated roles are read through the delegations, as a device of each channel would.
Targets are held in memory one at a time.

--at checks validity at another time: '--at +12h' fails if anything expires within 12 hours
(a good monitoring check).`,
		Example: `  basalt repo verify --repo repo
  basalt repo verify --url https://updates.example.com --root image/root.json --at +12h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (repo == "") == (url == "") {
				return usageError{errors.New("give either --repo or --url")}
			}
			if root == "" {
				if repo == "" {
					return usageError{errors.New("--url needs --root (the trusted root.json)")}
				}
				root = filepath.Join(repo, tufrepo.MetadataDir, tufrepo.FirstRootFile)
			}
			trusted, err := os.ReadFile(root)
			if err != nil {
				return fmt.Errorf("trusted root: %w", err)
			}
			var when time.Time
			if at != "" {
				if when, err = parseAt(at, time.Now()); err != nil {
					return usageError{err}
				}
			}
			rep, err := tufrepo.Verify(tufrepo.VerifyOptions{TrustedRoot: trusted, Dir: repo, URL: url, At: when})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "ok: root %d, timestamp %d, snapshot %d, targets %d, %d channel roles; %d targets (%d bytes) verified\n",
				rep.Root, rep.Timestamp, rep.Snapshot, rep.Targets, len(rep.Roles), rep.Files, rep.Bytes)
			printExpiryMap(out, rep.Expires)
			printVersions(out, rep.Versions)
			return nil
		},
	}
	cmd.Flags().StringVar(&repo, "repo", "", "repository folder")
	cmd.Flags().StringVar(&url, "url", "", "repository base URL (serving metadata/ and targets/)")
	cmd.Flags().StringVar(&root, "root", "", "trusted root.json (default REPO/metadata/1.root.json)")
	cmd.Flags().StringVar(&at, "at", "", "reference time: RFC 3339, or +DURATION from now (+12h, +7d)")
	return cmd
}

// parseAt reads an RFC 3339 time or "+DURATION" from now.
func parseAt(s string, now time.Time) (time.Time, error) {
	if d, ok := strings.CutPrefix(s, "+"); ok {
		v, err := tufrepo.ParseDuration(d)
		if err != nil {
			return time.Time{}, fmt.Errorf("--at: %w", err)
		}
		return now.Add(v), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--at %q: want RFC 3339 (2026-01-02T15:04:05Z) or +DURATION", s)
	}
	return t, nil
}

func newRepoServeCmd() *cobra.Command {
	var repo, addr string
	cmd := &cobra.Command{
		Use:   "serve --repo REPO [--addr 127.0.0.1:8080]",
		Short: "Serve the repository over HTTP on a loopback address (development only)",
		Long: `serve is a plain static file server for development and tests: REPO/metadata at /metadata/ and
REPO/targets at /targets/, nothing else. It listens on loopback addresses only; production
repositories belong on a real static host or CDN.`,
		Example: `  basalt repo serve --repo repo --addr 127.0.0.1:8080
  # then, in basalt-updater's config: url: http://127.0.0.1:8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return usageError{fmt.Errorf("--addr %q: %w", addr, err)}
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				return usageError{fmt.Errorf("--addr %q: serve listens on loopback addresses only (127.0.0.1, ::1)", addr)}
			}
			if _, err := os.Stat(filepath.Join(repo, tufrepo.MetadataDir, tufrepo.TimestampFile)); err != nil {
				return fmt.Errorf("%s is not a published repository: %w", repo, err)
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: tufrepo.Handler(repo), ReadHeaderTimeout: 10 * time.Second}
			loggerFrom(cmd.Context()).Info("serving repository", "repo", repo, "url", "http://"+ln.Addr().String())
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s at http://%s (Ctrl-C stops)\n", repo, ln.Addr())
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			select {
			case err := <-errc:
				return err
			case <-cmd.Context().Done():
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return srv.Shutdown(ctx)
			}
		},
	}
	cmd.Flags().StringVar(&repo, "repo", "", "repository folder (required)")
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8080", "loopback address to listen on")
	cmd.MarkFlagRequired("repo")
	return cmd
}

func newRepoStatusCmd() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:     "status --repo REPO",
		Short:   "Show metadata versions, expiry, published versions and any staged root",
		Example: `  basalt repo status --repo repo`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			out := cmd.OutOrStdout()
			ro, t, s, ts := r.MetadataVersions()
			fmt.Fprintf(out, "root %d, targets %d, snapshot %d, timestamp %d; layout for new channels: %s\n", ro, t, s, ts, r.Layout())
			if err := printExpiry(out, r); err != nil {
				return err
			}
			if st, err := r.StagedRoot(); err == nil {
				fmt.Fprintln(out, st)
			} else if !errors.Is(err, tufrepo.ErrNoStagedRoot) {
				return err
			}
			vs, err := r.List()
			if err != nil {
				return err
			}
			printVersions(out, vs)
			return nil
		},
	}
	f.add(cmd, false)
	return cmd
}

func printRootStatus(cmd *cobra.Command, st *tufrepo.RootStatus) error {
	_, err := fmt.Fprintln(cmd.OutOrStdout(), st)
	return err
}

func printExpiry(w io.Writer, r *tufrepo.Repo) error {
	exp, err := r.Expires()
	if err != nil {
		return err
	}
	printExpiryMap(w, exp)
	return nil
}

func printExpiryMap(w io.Writer, exp map[string]time.Time) {
	roles := make([]string, 0, len(exp))
	for r := range exp {
		roles = append(roles, r)
	}
	sort.Strings(roles)
	for _, r := range roles {
		fmt.Fprintf(w, "  %-9s expires %s\n", r, exp[r].Format(time.RFC3339))
	}
}

func printVersions(w io.Writer, vs []tufrepo.Version) {
	for _, v := range vs {
		fmt.Fprintf(w, "  %-10s %s %s\n", v.Channel, v.Name, v.Version)
	}
}

func newRepoMigrateCmd() *cobra.Command {
	var f repoFlags
	var channels []string
	var all bool
	cmd := &cobra.Command{
		Use:   "migrate --repo REPO --keys KEYS (--channel CHANNEL... | --all)",
		Short: "Move channels from the top-level targets into delegated roles (older repositories)",
		Long: `migrate moves channels of a repository made before delegated roles existed (or with
'repo init --layout top-level') out of the top-level targets metadata into a delegated role each
("channel-<channel>", signed with the targets key): the same target paths, files and custom fields,
in one new targets, snapshot and timestamp. Afterwards the metadata a device downloads grows with
its own channel only, and a publish re-signs one channel's role.

Devices whose basalt-updater predates delegated roles read the top-level targets only: after the
move they no longer see the channel's versions (they are not harmed; they just find no update).
So first roll out, through the channel as it is, an updater that reads delegated roles to every
device of the channel; then migrate it. --all moves every channel and makes channels published for
the first time delegated too; without it new channels stay in the top-level targets.

The repository's settings file records a layout afterwards: older basalt versions refuse to open it.`,
		Example: `  basalt repo migrate --repo repo --keys keys --channel beta
  basalt repo migrate --repo repo --keys keys --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(channels) == 0 && !all {
				return usageError{errors.New("give --channel (repeatable) or --all")}
			}
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			res, err := r.Migrate(tufrepo.MigrateOptions{Channels: channels, All: all})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, c := range res.Channels {
				fmt.Fprintf(out, "channel %s moved to role %s\n", c, tufrepo.ChannelRole(c))
			}
			if res.TargetsVersion != 0 {
				fmt.Fprintf(out, "targets version %d\n", res.TargetsVersion)
			}
			fmt.Fprintf(out, "new channels: %s\n", res.Layout)
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringSliceVar(&channels, "channel", nil, "channel to move into its delegated role (repeatable)")
	cmd.Flags().BoolVar(&all, "all", false, "move every channel, and put new channels in delegated roles too")
	return cmd
}
