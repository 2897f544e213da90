package lint

// SA21Result is what the CIS 2.1 self-assessment for K3s ("SA21": k3s-io/docs
// docs/security/self-assessment-2.1.md, K3s v1.36–v1.37) recorded for a control.
type SA21Result string

// SA21 results.
const (
	SA21Pass SA21Result = "pass"
	SA21Warn SA21Result = "warn" // manual in the benchmark: left to the operator
	SA21NA   SA21Result = "n/a"  // not applicable to K3s's design
)

// Control is one control of the CIS Kubernetes Benchmark v2.1 as SA21 lists it.
type Control struct {
	ID    string
	Title string // shortened
	SA21  SA21Result
}

// Controls returns the 134 controls of SA21 in document order.
func Controls() []Control { return append([]Control(nil), controls...) }

var controls = []Control{
	// 1.1 Control plane node configuration files
	{"1.1.1", "API server pod spec file permissions 600", SA21NA},
	{"1.1.2", "API server pod spec file owned by root:root", SA21NA},
	{"1.1.3", "Controller manager pod spec file permissions 600", SA21NA},
	{"1.1.4", "Controller manager pod spec file owned by root:root", SA21NA},
	{"1.1.5", "Scheduler pod spec file permissions 600", SA21NA},
	{"1.1.6", "Scheduler pod spec file owned by root:root", SA21NA},
	{"1.1.7", "etcd pod spec file permissions 600", SA21NA},
	{"1.1.8", "etcd pod spec file owned by root:root", SA21NA},
	{"1.1.9", "CNI files permissions 600", SA21Pass},
	{"1.1.10", "CNI files owned by root:root", SA21Pass},
	{"1.1.11", "etcd data directory permissions 700", SA21Pass},
	{"1.1.12", "etcd data directory owned by etcd:etcd", SA21NA},
	{"1.1.13", "Admin kubeconfig permissions 600", SA21Pass},
	{"1.1.14", "Admin kubeconfig owned by root:root", SA21Pass},
	{"1.1.15", "Scheduler kubeconfig permissions 600", SA21Pass},
	{"1.1.16", "Scheduler kubeconfig owned by root:root", SA21Pass},
	{"1.1.17", "Controller manager kubeconfig permissions 600", SA21Pass},
	{"1.1.18", "Controller manager kubeconfig owned by root:root", SA21Pass},
	{"1.1.19", "PKI directory and files owned by root:root", SA21Pass},
	{"1.1.20", "PKI certificate files permissions 644", SA21Pass},
	{"1.1.21", "PKI key files permissions 600", SA21Pass},
	// 1.2 API server
	{"1.2.1", "API server anonymous requests restricted", SA21Pass},
	{"1.2.2", "API server --token-auth-file not set", SA21Pass},
	{"1.2.3", "DenyServiceExternalIPs admission plugin set", SA21Warn},
	{"1.2.4", "API server kubelet client certificate and key set", SA21Pass},
	{"1.2.5", "API server --kubelet-certificate-authority set", SA21Pass},
	{"1.2.6", "API server authorization mode not AlwaysAllow", SA21Pass},
	{"1.2.7", "API server authorization mode includes Node", SA21Pass},
	{"1.2.8", "API server authorization mode includes RBAC", SA21Pass},
	{"1.2.9", "EventRateLimit admission plugin set", SA21Warn},
	{"1.2.10", "AlwaysAdmit admission plugin not set", SA21Pass},
	{"1.2.11", "AlwaysPullImages admission plugin set", SA21Warn},
	{"1.2.12", "ServiceAccount admission plugin set", SA21Pass},
	{"1.2.13", "NamespaceLifecycle admission plugin set", SA21Pass},
	{"1.2.14", "NodeRestriction admission plugin set", SA21Pass},
	{"1.2.15", "API server --profiling false", SA21Pass},
	{"1.2.16", "API server --audit-log-path set", SA21Pass},
	{"1.2.17", "API server --audit-log-maxage 30 or more", SA21Pass},
	{"1.2.18", "API server --audit-log-maxbackup 10 or more", SA21Pass},
	{"1.2.19", "API server --audit-log-maxsize 100 or more", SA21Pass},
	{"1.2.20", "API server --request-timeout appropriate", SA21Warn},
	{"1.2.21", "API server --service-account-lookup true", SA21Pass},
	{"1.2.22", "API server --service-account-key-file set", SA21Pass},
	{"1.2.23", "API server --etcd-certfile and --etcd-keyfile set", SA21Pass},
	{"1.2.24", "API server --tls-cert-file and --tls-private-key-file set", SA21Pass},
	{"1.2.25", "API server --client-ca-file set", SA21Pass},
	{"1.2.26", "API server --etcd-cafile set", SA21Pass},
	{"1.2.27", "API server --encryption-provider-config set", SA21Pass},
	{"1.2.28", "Encryption providers appropriately configured", SA21Pass},
	{"1.2.29", "API server uses strong ciphers only", SA21Pass},
	{"1.2.30", "API server --service-account-extend-token-expiration false", SA21Pass},
	// 1.3 Controller manager
	{"1.3.1", "Controller manager --terminated-pod-gc-threshold set", SA21Pass},
	{"1.3.2", "Controller manager --profiling false", SA21Pass},
	{"1.3.3", "Controller manager --use-service-account-credentials true", SA21Pass},
	{"1.3.4", "Controller manager --service-account-private-key-file set", SA21Pass},
	{"1.3.5", "Controller manager --root-ca-file set", SA21Pass},
	{"1.3.6", "RotateKubeletServerCertificate true (controller manager)", SA21Pass},
	{"1.3.7", "Controller manager --bind-address 127.0.0.1", SA21Pass},
	// 1.4 Scheduler
	{"1.4.1", "Scheduler --profiling false", SA21Pass},
	{"1.4.2", "Scheduler --bind-address 127.0.0.1", SA21Pass},
	// 2 etcd
	{"2.1", "etcd --cert-file and --key-file set", SA21Pass},
	{"2.2", "etcd --client-cert-auth true", SA21Pass},
	{"2.3", "etcd --auto-tls not true", SA21Pass},
	{"2.4", "etcd --peer-cert-file and --peer-key-file set", SA21Pass},
	{"2.5", "etcd --peer-client-cert-auth true", SA21Pass},
	{"2.6", "etcd --peer-auto-tls not true", SA21Pass},
	{"2.7", "etcd uses a unique certificate authority", SA21Pass},
	// 3 Control plane configuration
	{"3.1.1", "No client certificate authentication for users", SA21Warn},
	{"3.1.2", "No service account token authentication for users", SA21Warn},
	{"3.1.3", "No bootstrap token authentication for users", SA21Warn},
	{"3.2.1", "Minimal audit policy created", SA21Pass},
	{"3.2.2", "Audit policy covers key security concerns", SA21Warn},
	// 4.1 Worker node configuration files
	{"4.1.1", "kubelet service file permissions 600", SA21NA},
	{"4.1.2", "kubelet service file owned by root:root", SA21NA},
	{"4.1.3", "Proxy kubeconfig permissions 600", SA21Pass},
	{"4.1.4", "Proxy kubeconfig owned by root:root", SA21Pass},
	{"4.1.5", "kubelet kubeconfig permissions 600", SA21Pass},
	{"4.1.6", "kubelet kubeconfig owned by root:root", SA21Pass},
	{"4.1.7", "Certificate authorities file permissions 644", SA21Pass},
	{"4.1.8", "Client certificate authorities file owned by root:root", SA21Pass},
	{"4.1.9", "kubelet config.yaml permissions 600", SA21NA},
	{"4.1.10", "kubelet config.yaml owned by root:root", SA21NA},
	{"4.1.11", "kubelet drop-in config directory permissions", SA21NA},
	// 4.2 Kubelet
	{"4.2.1", "kubelet --anonymous-auth false", SA21Pass},
	{"4.2.2", "kubelet authorization mode not AlwaysAllow", SA21Pass},
	{"4.2.3", "kubelet --client-ca-file set", SA21Pass},
	{"4.2.4", "kubelet read-only port 0", SA21Pass},
	{"4.2.5", "kubelet --streaming-connection-idle-timeout not 0", SA21Pass},
	{"4.2.6", "kubelet --make-iptables-util-chains true", SA21Pass},
	{"4.2.7", "kubelet --hostname-override not set", SA21NA},
	{"4.2.8", "kubelet eventRecordQPS appropriate", SA21Pass},
	{"4.2.9", "kubelet --tls-cert-file and --tls-private-key-file set", SA21Pass},
	{"4.2.10", "kubelet --rotate-certificates not false", SA21Pass},
	{"4.2.11", "RotateKubeletServerCertificate true (kubelet)", SA21Pass},
	{"4.2.12", "kubelet uses strong ciphers only", SA21Warn},
	{"4.2.13", "Pod PID limit set", SA21Warn},
	{"4.2.14", "kubelet --seccomp-default true", SA21Warn},
	// 4.3 kube-proxy
	{"4.3.1", "kube-proxy metrics bound to localhost", SA21Pass},
	// 5.1 RBAC and service accounts
	{"5.1.1", "cluster-admin role only used where required", SA21Pass},
	{"5.1.2", "Minimize access to secrets", SA21Pass},
	{"5.1.3", "Minimize wildcards in Roles and ClusterRoles", SA21Pass},
	{"5.1.4", "Minimize access to create pods", SA21Pass},
	{"5.1.5", "Default service accounts not actively used", SA21Warn},
	{"5.1.6", "Service account tokens only mounted where necessary", SA21Pass},
	{"5.1.7", "Avoid use of the system:masters group", SA21Warn},
	{"5.1.8", "Limit Bind, Impersonate and Escalate permissions", SA21Warn},
	{"5.1.9", "Minimize access to create persistent volumes", SA21Warn},
	{"5.1.10", "Minimize access to the nodes/proxy sub-resource", SA21Warn},
	{"5.1.11", "Minimize access to CSR approval", SA21Warn},
	{"5.1.12", "Minimize access to webhook configuration objects", SA21Warn},
	{"5.1.13", "Minimize access to service account token creation", SA21Warn},
	{"5.1.14", "Kubelet API access uses fine-grained subresources", SA21Warn},
	// 5.2 Pod Security Standards
	{"5.2.1", "At least one active policy control mechanism", SA21Warn},
	{"5.2.2", "Minimize admission of privileged containers", SA21Pass},
	{"5.2.3", "Minimize admission of hostPID containers", SA21Pass},
	{"5.2.4", "Minimize admission of hostIPC containers", SA21Pass},
	{"5.2.5", "Minimize admission of hostNetwork containers", SA21Pass},
	{"5.2.6", "Minimize admission of allowPrivilegeEscalation", SA21Pass},
	{"5.2.7", "Minimize admission of root containers", SA21Warn},
	{"5.2.8", "Minimize admission of NET_RAW capability", SA21Warn},
	{"5.2.9", "Minimize admission of added capabilities", SA21Warn},
	{"5.2.10", "Minimize admission of Windows HostProcess containers", SA21Warn},
	{"5.2.11", "Minimize admission of HostPath volumes", SA21Warn},
	{"5.2.12", "Minimize admission of HostPorts", SA21Warn},
	{"5.2.13", "Minimize admission of unmasked procMount", SA21Warn},
	// 5.3 Network policies and CNI
	{"5.3.1", "CNI supports NetworkPolicies", SA21Warn},
	{"5.3.2", "All namespaces have NetworkPolicies", SA21Warn},
	// 5.4 Secrets management
	{"5.4.1", "Secrets as files rather than environment variables", SA21Warn},
	{"5.4.2", "Consider external secret storage", SA21Warn},
	// 5.5 Extensible admission control
	{"5.5.1", "Image provenance via ImagePolicyWebhook", SA21Warn},
	// 5.6 General policies
	{"5.6.1", "Administrative boundaries with namespaces", SA21Warn},
	{"5.6.2", "seccomp profile RuntimeDefault in pod definitions", SA21Warn},
	{"5.6.3", "Security context applied to pods and containers", SA21Warn},
	{"5.6.4", "Default namespace not used", SA21Warn},
}
