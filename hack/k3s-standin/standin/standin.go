// Package standin is a stand-in for the parts of K3s that Basalt's K3s health checks see. A live K3s
// cannot run where Basalt is built and tested: no k3s, kube-apiserver or etcd binary of a usable
// version can be had there (no network; the Go proxy refuses github.com/k3s-io/k3s; Debian ships none;
// see the project's K3s research notes, section 3). So the QEMU end-to-end suite installs this as
// /usr/local/bin/k3s, and it behaves like K3s where the updater looks:
//
//   - it reads /etc/rancher/k3s/config.yaml and its drop-ins with K3s's merge rule (k3s.Merge);
//   - like kubelet, with protect-kernel-defaults it refuses to start when one of the six kernel flags
//     kubelet checks differs (its "Failed to start ContainerManager" error, exit 1), and without it
//     sets them;
//   - otherwise it keeps a server CA and a client CA under the data dir, writes the node's
//     agent/kubelet.kubeconfig (mode 0600) with a kubelet client certificate, and serves the API
//     server's /readyz, /livez and /healthz and this node (Ready, this boot's id, its version) on
//     https://127.0.0.1:6443 to clients with a certificate, and kubelet's http://127.0.0.1:10248/healthz.
//
// It is no Kubernetes: no etcd, no objects besides the node, no pods.
package standin

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DefaultVersion is the K3s release the stand-in reports unless told otherwise.
const DefaultVersion = "v1.36.2+k3s1"

// Options say where the stand-in finds its files and serves.
type Options struct {
	// Role is "server" (the API and kubelet) or "agent" (kubelet only).
	Role string
	// Version is the K3s release it reports as kubeletVersion ("": DefaultVersion).
	Version string
	// Root is the file-system root of /etc/rancher/k3s, /etc/os-release and the data dir ("": "/").
	Root string
	// Proc is where procfs is ("": "/proc"): the kernel flags, boot id, kernel version and memory.
	Proc string
	// APIAddr is the API server's address ("": 127.0.0.1:6443; "127.0.0.1:0" for a free port).
	APIAddr string
	// KubeletAddr is kubelet's healthz address ("": 127.0.0.1:10248).
	KubeletAddr string
	// Hostname is the node name when node-name is not set ("": os.Hostname in lower case, as K3s).
	Hostname string
	// Log receives the stand-in's lines and kubelet's error (nil: io.Discard).
	Log io.Writer
	// Ready, if set, is called once both listeners serve, with their addresses.
	Ready func(api, kubelet net.Addr)
}

// ErrRefused is wrapped by Run's error when kubelet would refuse to start (a *KernelFlagsError); Run
// has then printed kubelet's error line.
var ErrRefused = errors.New("kubelet refused to start")

// server is one running stand-in.
type server struct {
	version  string
	nodeName string
	uid      string
	started  time.Time
	sys      sysInfo
	now      func() time.Time
}

// sysInfo is what kubelet reports of the machine.
type sysInfo struct {
	bootID, machineID, systemUUID, kernel, osImage, arch string
	cpus                                                 int
	memKi                                                int64
}

// Run starts the stand-in and serves until ctx ends. It returns an error wrapping ErrRefused when
// kubelet's kernel-flag check fails.
func Run(ctx context.Context, o Options) error {
	o.setDefaults()
	cfg, err := LoadConfig(o.Root)
	if err != nil {
		return err
	}
	updated, err := SetupKernelTunables(o.Proc, cfg.ProtectKernelDefaults)
	if err != nil {
		// kubelet: klog.ErrorS(err, "Failed to start ContainerManager"); os.Exit(1).
		fmt.Fprintf(o.Log, "%s \"Failed to start ContainerManager\" err=%q\n", klogHeader('E', time.Now(), "kubelet.go:1765"), err.Error())
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	for _, u := range updated {
		fmt.Fprintf(o.Log, "k3s-standin: updated kernel flag %s (protect-kernel-defaults is off)\n", u)
	}
	s := &server{version: o.Version, nodeName: cfg.NodeName, started: time.Now(), now: time.Now}
	if s.nodeName == "" {
		s.nodeName = o.Hostname
	}
	if s.nodeName == "" {
		return errors.New("no node name: set node-name or the host name")
	}
	if s.sys, err = readSysInfo(o.Root, o.Proc); err != nil {
		return err
	}
	s.uid = nodeUID()
	dataDir := filepath.Join(o.Root, cfg.DataDir)
	reportImages(o.Log, filepath.Join(dataDir, "agent", "images"))

	kubelet, err := net.Listen("tcp", o.KubeletAddr)
	if err != nil {
		return fmt.Errorf("kubelet healthz: %w", err)
	}
	kmux := http.NewServeMux()
	kmux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	errLog := log.New(o.Log, "k3s-standin: ", 0)
	servers := []*http.Server{{Handler: kmux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}}
	listeners := []net.Listener{kubelet}
	apiAddr := net.Addr(nil)

	if o.Role == "server" {
		tlsConf, err := s.setupTLS(dataDir)
		if err != nil {
			kubelet.Close()
			return err
		}
		api, err := tls.Listen("tcp", o.APIAddr, tlsConf)
		if err != nil {
			kubelet.Close()
			return fmt.Errorf("apiserver: %w", err)
		}
		apiAddr = api.Addr()
		mux := http.NewServeMux()
		for _, name := range []string{"readyz", "livez", "healthz"} {
			mux.HandleFunc("/"+name, healthz(name))
		}
		mux.HandleFunc("/api/v1/nodes/", s.nodeHandler)
		servers = append(servers, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog})
		listeners = append(listeners, api)
	}

	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() { errc <- srv.Serve(listeners[i]) }()
	}
	fmt.Fprintf(o.Log, "k3s-standin: serving (version %s, role %s, node %s, apiserver %v, kubelet healthz %v)\n",
		o.Version, o.Role, s.nodeName, apiAddr, kubelet.Addr())
	if o.Ready != nil {
		o.Ready(apiAddr, kubelet.Addr())
	}
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
		err = fmt.Errorf("serve: %w", err)
	}
	for _, srv := range servers {
		srv.Close()
	}
	return err
}

func (o *Options) setDefaults() {
	if o.Role == "" {
		o.Role = "server"
	}
	if o.Version == "" {
		o.Version = DefaultVersion
	}
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Proc == "" {
		o.Proc = "/proc"
	}
	if o.APIAddr == "" {
		o.APIAddr = "127.0.0.1:6443"
	}
	if o.KubeletAddr == "" {
		o.KubeletAddr = "127.0.0.1:10248"
	}
	if o.Hostname == "" {
		h, _ := os.Hostname()
		o.Hostname = strings.ToLower(h) // as K3s takes it
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// setupTLS loads or makes the server and client CAs under <dataDir>/server/tls, issues the serving
// certificate and the kubelet's client certificate (agent/client-kubelet.crt and .key), writes
// agent/kubelet.kubeconfig, and returns the API's TLS config, which requires a client certificate
// from the client CA.
func (s *server) setupTLS(dataDir string) (*tls.Config, error) {
	tlsDir := filepath.Join(dataDir, "server", "tls")
	serverCA, err := loadOrCreateCA(tlsDir, "server-ca")
	if err != nil {
		return nil, err
	}
	clientCA, err := loadOrCreateCA(tlsDir, "client-ca")
	if err != nil {
		return nil, err
	}
	crt, key, err := serverCA.leaf("k3s", []string{"k3s"}, false,
		[]string{"127.0.0.1", "::1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", s.nodeName})
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	ccrt, ckey, err := clientCA.leaf("system:node:"+s.nodeName, []string{"system:nodes"}, true, nil)
	if err != nil {
		return nil, err
	}
	agent := filepath.Join(dataDir, "agent")
	crtPath, keyPath := filepath.Join(agent, "client-kubelet.crt"), filepath.Join(agent, "client-kubelet.key")
	if err := writeAtomic(keyPath, ckey, 0o600); err != nil {
		return nil, err
	}
	if err := writeAtomic(crtPath, ccrt, 0o644); err != nil {
		return nil, err
	}
	if err := writeAtomic(filepath.Join(agent, "kubelet.kubeconfig"), kubeconfig(serverCA.certPEM, crtPath, keyPath), 0o600); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.cert)
	return &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// kubeconfig is K3s's agent/kubelet.kubeconfig, with the server CA inline and the client certificate
// and key by absolute path.
func kubeconfig(caPEM []byte, crtPath, keyPath string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: %s
  name: local
contexts:
- context:
    cluster: local
    namespace: default
    user: user
  name: Default
current-context: Default
preferences: {}
users:
- name: user
  user:
    client-certificate: %s
    client-key: %s
`, base64.StdEncoding.EncodeToString(caPEM), crtPath, keyPath)
}

// readSysInfo reads what kubelet reports: the boot id (required), kernel version, memory, machine id
// and the OS's PRETTY_NAME.
func readSysInfo(root, proc string) (sysInfo, error) {
	si := sysInfo{cpus: runtime.NumCPU(), arch: runtime.GOARCH, osImage: "Linux"}
	b, err := os.ReadFile(filepath.Join(proc, "sys", "kernel", "random", "boot_id"))
	if err != nil {
		return si, fmt.Errorf("boot id: %w", err)
	}
	si.bootID = strings.TrimSpace(string(b))
	if b, err := os.ReadFile(filepath.Join(proc, "sys", "kernel", "osrelease")); err == nil {
		si.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc", "machine-id")); err == nil {
		si.machineID = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(proc, "meminfo")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				si.memKi, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc", "os-release")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				if u, err := strconv.Unquote(v); err == nil {
					v = u
				}
				si.osImage = v
			}
		}
	}
	return si, nil
}

// reportImages prints the air-gap image tarballs K3s would import from dir (links followed).
func reportImages(log io.Writer, dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var lines []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			lines = append(lines, fmt.Sprintf("%s (unreadable: %v)", e.Name(), err))
			continue
		}
		lines = append(lines, fmt.Sprintf("%s (%d bytes)", e.Name(), fi.Size()))
	}
	sort.Strings(lines)
	fmt.Fprintf(log, "k3s-standin: air-gap images in %s: %s\n", dir, strings.Join(lines, ", "))
}

// nodeUID is a random UUID (version 4) for the node object.
func nodeUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// klogHeader is klog's line header: severity, date, time, process id and source position.
func klogHeader(sev byte, t time.Time, pos string) string {
	_, month, day := t.Date()
	return fmt.Sprintf("%c%02d%02d %02d:%02d:%02d.%06d %7d %s]", sev, int(month), day, t.Hour(), t.Minute(), t.Second(),
		t.Nanosecond()/1000, os.Getpid(), pos)
}
