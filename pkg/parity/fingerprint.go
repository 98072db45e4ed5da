package parity

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// How a snapshot keeps Secret values.
const (
	FingerprintHMAC = "hmac-sha256" // an HMAC-SHA256 of each value
	FingerprintNone = "none"        // keys only
)

// UnknownSecretValue stands for a Secret value a snapshot does not keep.
const UnknownSecretValue = "(not kept)"

// MinKeyLen is the shortest fingerprint key accepted: shorter keys would
// make the HMAC of a guessable value easy to check offline.
const MinKeyLen = 16

// Fingerprinter turns Secret values into HMACs under one key, so two sides
// fingerprinted with it compare without either value being kept.
type Fingerprinter struct {
	key []byte
	id  string
}

// NewFingerprinter uses key, e.g. the contents of a --fingerprint-key file.
func NewFingerprinter(key []byte) (*Fingerprinter, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("fingerprint key is %d bytes, want at least %d", len(key), MinKeyLen)
	}
	k := append([]byte(nil), key...)
	m := hmac.New(sha256.New, k)
	m.Write([]byte("detour parity key id"))
	return &Fingerprinter{key: k, id: hex.EncodeToString(m.Sum(nil))[:16]}, nil
}

// NewRunFingerprinter makes a random key for one run: values of the sides
// read in this run compare; nothing written with it can be compared later.
func NewRunFingerprinter() (*Fingerprinter, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, errors.New("make a fingerprint key: no randomness")
	}
	return NewFingerprinter(key)
}

// KeyID names the key without revealing it.
func (f *Fingerprinter) KeyID() string { return f.id }

// Sum fingerprints one value.
func (f *Fingerprinter) Sum(value []byte) string {
	m := hmac.New(sha256.New, f.key)
	m.Write(value)
	return "hmac:" + hex.EncodeToString(m.Sum(nil))
}
