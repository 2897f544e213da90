package kube

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Error classes. Every error of a Client wraps exactly one of them, so callers decide with errors.Is;
// an answer of the API server is also an *APIError (errors.As) with its code, reason and message.
var (
	// ErrNotFound: the object does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the object changed since it was read (409 Conflict: a stale resourceVersion); read
	// it again and decide again.
	ErrConflict = errors.New("conflict")
	// ErrAlreadyExists: a Create found the object there (409 AlreadyExists).
	ErrAlreadyExists = errors.New("already exists")
	// ErrEvictionBlocked: an eviction was refused because of a PodDisruptionBudget (429 with a
	// DisruptionBudget cause, or a pod covered by more than one budget); the message names the budget.
	ErrEvictionBlocked = errors.New("eviction blocked by a disruption budget")
	// ErrAccess: the API refused the credentials (401) or the permission (403), or its certificate did
	// not verify against the configured CA: a configuration mistake, not a fault.
	ErrAccess = errors.New("access refused")
	// ErrInvalid: the API refused the request as malformed or invalid (400, 405, 415, 422): a bug or
	// bad input, which retrying does not fix.
	ErrInvalid = errors.New("invalid request")
	// ErrFault: the API could not be reached or failed (connection, timeout, 5xx, 429 throttling, an
	// answer that does not decode): retrying later may help.
	ErrFault = errors.New("API server fault")
)

// APIError is a failure answer of the API server, a metav1.Status.
type APIError struct {
	// Op is what was asked, such as "update lease basalt-system/basalt-reboot".
	Op string
	// Code is the HTTP status (for a Failure Status inside a 2xx answer, the Status's code).
	Code int
	// Reason and Message are the Status's (Reason may be empty, as for a pod with two budgets).
	Reason  string
	Message string
	// Causes are the Status's details.causes, such as the DisruptionBudget cause naming the budget.
	Causes []StatusCause
	// RetryAfter is the Status's details.retryAfterSeconds (or the Retry-After header).
	RetryAfter time.Duration

	class error
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("%s: %d", e.Op, e.Code)
	if e.Reason != "" {
		s += " " + e.Reason
	} else if t := http.StatusText(e.Code); t != "" {
		s += " " + t
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	for _, c := range e.Causes {
		if c.Message != "" && !strings.Contains(e.Message, c.Message) {
			s += " (" + c.Message + ")"
		}
	}
	return s
}

// Unwrap returns the error's class.
func (e *APIError) Unwrap() error { return e.class }

// DisruptionBudgetCause is the StatusCause type of an eviction refused by a budget
// (policyv1.DisruptionBudgetCause).
const DisruptionBudgetCause = "DisruptionBudget"

// newAPIError makes an APIError of st (a decoded Status, or a zero one when the body was not a
// Status) for an answer with HTTP status code.
func newAPIError(op string, code int, st *Status, header http.Header, eviction bool) *APIError {
	e := &APIError{Op: op, Code: code}
	if st != nil {
		e.Reason, e.Message = st.Reason, st.Message
		if st.Code != 0 {
			e.Code = int(st.Code)
		}
		if st.Details != nil {
			e.Causes = st.Details.Causes
			e.RetryAfter = time.Duration(st.Details.RetryAfterSeconds) * time.Second
		}
	}
	if e.RetryAfter == 0 && header != nil {
		if s := header.Get("Retry-After"); s != "" {
			var n int
			if _, err := fmt.Sscanf(s, "%d", &n); err == nil && n > 0 {
				e.RetryAfter = time.Duration(n) * time.Second
			}
		}
	}
	e.class = classify(e, eviction)
	return e
}

func classify(e *APIError, eviction bool) error {
	switch {
	case eviction && e.budgetRefusal():
		return ErrEvictionBlocked
	case e.Code == http.StatusNotFound:
		return ErrNotFound
	case e.Code == http.StatusConflict && e.Reason == "AlreadyExists":
		return ErrAlreadyExists
	case e.Code == http.StatusConflict:
		return ErrConflict
	case e.Code == http.StatusUnauthorized, e.Code == http.StatusForbidden:
		return ErrAccess
	case e.Code == http.StatusBadRequest, e.Code == http.StatusMethodNotAllowed,
		e.Code == http.StatusUnsupportedMediaType, e.Code == http.StatusUnprocessableEntity,
		e.Code == http.StatusRequestEntityTooLarge:
		return ErrInvalid
	}
	return ErrFault
}

// budgetRefusal tells an eviction refused by a budget: 429 with a DisruptionBudget cause (API
// priority and fairness also answers 429, without one), or the 500 of a pod with two budgets.
func (e *APIError) budgetRefusal() bool {
	switch e.Code {
	case http.StatusTooManyRequests:
		for _, c := range e.Causes {
			if c.Type == DisruptionBudgetCause {
				return true
			}
		}
		return strings.Contains(e.Message, "disruption budget")
	case http.StatusInternalServerError:
		return strings.Contains(e.Message, "more than one PodDisruptionBudget")
	}
	return false
}
