package webhookguard

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"
	"sync"
	"sync/atomic"
)

// macKey holds keyed HMAC states for one secret. Keying an HMAC hashes the
// secret into its inner and outer pads; reusing a keyed state with Reset
// skips that work and its allocations on every request.
type macKey struct {
	// slot holds one idle state: taking it with an atomic swap costs less
	// than a pool round trip, which matters at small bodies; the pool
	// serves concurrent requests beyond the first.
	slot atomic.Pointer[macState]
	pool sync.Pool
	size int
}

type macState struct {
	mac hash.Hash
	sum []byte
}

func newMacKey(alg hashAlg, key []byte) *macKey {
	k := &macKey{}
	newHash := alg.newFunc()
	k.size = newHash().Size()
	secret := append([]byte(nil), key...)
	k.pool.New = func() any {
		return &macState{mac: hmac.New(newHash, secret), sum: make([]byte, 0, sha512.Size)}
	}
	return k
}

func (k *macKey) get() *macState {
	if st := k.slot.Swap(nil); st != nil {
		return st
	}
	return k.pool.Get().(*macState)
}

func (k *macKey) put(st *macState) {
	if !k.slot.CompareAndSwap(nil, st) {
		k.pool.Put(st)
	}
}

// matches reports, in constant time, whether sig is the HMAC of body.
func (k *macKey) matches(sig, body []byte) bool {
	st := k.get()
	st.mac.Reset()
	st.mac.Write(body)
	st.sum = st.mac.Sum(st.sum[:0])
	ok := hmac.Equal(sig, st.sum)
	k.put(st)
	return ok
}

// sign returns hex(HMAC(body)) for re-signing forwarded bodies.
func (k *macKey) sign(body []byte) string {
	st := k.get()
	defer k.put(st)
	st.mac.Reset()
	st.mac.Write(body)
	st.sum = st.mac.Sum(st.sum[:0])
	return hex.EncodeToString(st.sum)
}

// sum returns the raw HMAC of body.
func (k *macKey) sum(body []byte) []byte {
	st := k.get()
	defer k.put(st)
	st.mac.Reset()
	st.mac.Write(body)
	return st.mac.Sum(nil)
}

func (k *macKey) sumStandard(id, ts string, body []byte) []byte {
	st := k.get()
	defer k.put(st)
	st.mac.Reset()
	st.mac.Write([]byte(id))
	st.mac.Write([]byte{'.'})
	st.mac.Write([]byte(ts))
	st.mac.Write([]byte{'.'})
	st.mac.Write(body)
	return st.mac.Sum(nil)
}

// hashAlg is the hash an HMAC is built on.
type hashAlg int

const (
	hashSHA256 hashAlg = iota
	hashSHA512
	hashSHA1
)

func parseAlgorithm(s string) (hashAlg, error) {
	switch strings.ToLower(s) {
	case "", "sha256":
		return hashSHA256, nil
	case "sha512":
		return hashSHA512, nil
	case "sha1":
		return hashSHA1, nil
	}
	return 0, fmt.Errorf("unknown algorithm %q (want sha256, sha512 or sha1)", s)
}

func (a hashAlg) newFunc() func() hash.Hash {
	switch a {
	case hashSHA512:
		return sha512.New
	case hashSHA1:
		return sha1.New
	}
	return sha256.New
}
