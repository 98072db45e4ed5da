package data

import (
	"crypto/rand"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// Connection is how to reach a database: a branch's is what its forks and
// seed jobs get; the baseline's is what the snapshot is taken with.
type Connection struct {
	Host     string
	Port     int32
	User     string
	Password string
	Database string
}

// URL is the connection as a URL, postgres://USER:PASSWORD@HOST:PORT/DB,
// each part escaped.
func (c Connection) URL() string {
	u := url.URL{
		Scheme: "postgres",
		User:   url.UserPassword(c.User, c.Password),
		Host:   net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port))),
		Path:   "/" + c.Database,
	}
	return u.String()
}

// Part is one part of the connection, as a variable carries it.
func (c Connection) Part(p v1alpha1.ConnectionPart) string {
	switch p {
	case v1alpha1.ConnectionHost:
		return c.Host
	case v1alpha1.ConnectionPort:
		return strconv.Itoa(int(c.Port))
	case v1alpha1.ConnectionUser:
		return c.User
	case v1alpha1.ConnectionPassword:
		return c.Password
	case v1alpha1.ConnectionDatabase:
		return c.Database
	}
	return c.URL()
}

// Parts are the keys of a branch's Secret, one per part of its connection.
var Parts = []v1alpha1.ConnectionPart{
	v1alpha1.ConnectionURL, v1alpha1.ConnectionHost, v1alpha1.ConnectionPort,
	v1alpha1.ConnectionUser, v1alpha1.ConnectionPassword, v1alpha1.ConnectionDatabase,
}

// SecretData is the branch's Secret: each part of the connection under its
// name.
func (c Connection) SecretData() map[string][]byte {
	out := make(map[string][]byte, len(Parts))
	for _, p := range Parts {
		out[string(p)] = []byte(c.Part(p))
	}
	return out
}

// ConnectionFromSecret reads a connection back from a branch's Secret.
func ConnectionFromSecret(data map[string][]byte) (Connection, bool) {
	port, err := strconv.Atoi(string(data[string(v1alpha1.ConnectionPort)]))
	c := Connection{
		Host: string(data[string(v1alpha1.ConnectionHost)]), Port: int32(port),
		User:     string(data[string(v1alpha1.ConnectionUser)]),
		Password: string(data[string(v1alpha1.ConnectionPassword)]),
		Database: string(data[string(v1alpha1.ConnectionDatabase)]),
	}
	return c, err == nil && c.Host != "" && c.User != "" && c.Password != ""
}

// EnvSpec is the variables a branch's connection goes into: the spec's, or
// DATABASE_URL with the URL.
func EnvSpec(b *v1alpha1.PostgresBranch) []v1alpha1.ConnectionEnv {
	if len(b.Env) == 0 {
		return []v1alpha1.ConnectionEnv{{Name: "DATABASE_URL", Part: v1alpha1.ConnectionURL}}
	}
	out := make([]v1alpha1.ConnectionEnv, len(b.Env))
	for i, e := range b.Env {
		if e.Part == "" {
			e.Part = v1alpha1.ConnectionURL
		}
		out[i] = e
	}
	return out
}

// SecretEnv is the branch's connection as variables that take their values
// from its Secret (a cluster): no password in any pod spec.
func SecretEnv(b *v1alpha1.PostgresBranch, secret string) []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, e := range EnvSpec(b) {
		out = append(out, corev1.EnvVar{Name: e.Name, ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: string(e.Part)},
		}})
	}
	return out
}

// LiteralEnv is the branch's connection as literal variables (the lab,
// which has no Secrets).
func LiteralEnv(b *v1alpha1.PostgresBranch, c Connection) []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, e := range EnvSpec(b) {
		out = append(out, corev1.EnvVar{Name: e.Name, Value: c.Part(e.Part)})
	}
	return out
}

// ForkGetsEnv reports whether the forked workload gets the branch's
// connection: the spec's forks, or every fork.
func ForkGetsEnv(b *v1alpha1.PostgresBranch, workload string) bool {
	if len(b.Forks) == 0 {
		return true
	}
	for _, f := range b.Forks {
		if f == workload {
			return true
		}
	}
	return false
}

// SeedVar is the variable a seed job finds a branch's URL in, beside the
// variables the forks get: DETOUR_DATA_<NAME>_URL, the entry's name in
// upper case with '_' for '-'.
func SeedVar(entry string) string {
	return "DETOUR_DATA_" + strings.ToUpper(strings.ReplaceAll(entry, "-", "_")) + "_URL"
}

// NewPassword is a branch's password: 26 base32 characters from the
// system's random source (130 bits), safe in a URL and in SQL.
func NewPassword() string { return rand.Text() }

// Redactor takes secrets out of text that may reach a status, an event or
// a log (a program's error output, an error message): every value it was
// given, and the password of any URL in the text, become "***".
type Redactor struct{ secrets []string }

// Add registers secret values; empty ones are ignored.
func (r *Redactor) Add(secrets ...string) {
	for _, s := range secrets {
		if s != "" {
			r.secrets = append(r.secrets, s)
		}
	}
	// Longest first, so that a secret containing another goes whole.
	sort.Slice(r.secrets, func(i, j int) bool { return len(r.secrets[i]) > len(r.secrets[j]) })
}

var urlPassword = regexp.MustCompile(`(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@`)

// Redact returns s without the secrets.
func (r *Redactor) Redact(s string) string {
	for _, sec := range r.secrets {
		s = strings.ReplaceAll(s, sec, "***")
		// As a URL's user info or query would carry it.
		for _, e := range []string{strings.TrimPrefix(url.UserPassword("", sec).String(), ":"), url.QueryEscape(sec)} {
			if e != sec {
				s = strings.ReplaceAll(s, e, "***")
			}
		}
	}
	return urlPassword.ReplaceAllString(s, "${1}***@")
}
