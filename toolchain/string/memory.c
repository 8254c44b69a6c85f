/*
 * memcpy, memmove, memset and memcmp for every static link, in place of musl's x86_64
 * assembly and its byte-at-a-time C memcmp.
 *
 * musl copies with `rep movsq` plus single `movsb` steps for the unaligned ends, and fills
 * anything over 126 bytes with `rep stosq`. String instructions are microcoded: each one
 * spends tens of cycles starting up before it moves a byte. nginx makes short copies of
 * variable length all the time (header names and values, buffers) and clears every
 * pool-allocated struct with ngx_pcalloc, mostly a few hundred bytes to a couple of KB, so
 * that start-up cost is paid on almost every call. glibc's versions use overlapping unaligned
 * vector moves instead; these do the same with SSE2, which is part of the x86-64 baseline, so
 * the binary still runs on every x86-64 CPU. Only large fills keep a string instruction.
 * musl's memcmp compares one byte per step; nginx compares keys with it (hash and tree
 * lookups, the traffic status module's entries), so it compares 16 bytes a step here.
 *
 * Like the allocator, this object is linked ahead of every archive (see the specs'
 * *startfile), so libc.a's memcpy, memmove, memset and memcmp members are never pulled in.
 * Compiled with -ffreestanding -fno-tree-loop-distribute-patterns: the compiler must not turn
 * these loops back into calls to the functions they define.
 */
#include <emmintrin.h>
#include <stddef.h>
#include <stdint.h>

typedef __m128i v16;
typedef uint64_t __attribute__((may_alias, aligned(1))) u64_unaligned;
typedef uint32_t __attribute__((may_alias, aligned(1))) u32_unaligned;
typedef uint16_t __attribute__((may_alias, aligned(1))) u16_unaligned;

/* From this size on, memset's `rep stosq` (to an aligned destination) outruns a 16-byte vector
 * loop. Copies never use string instructions: on an AMD EPYC, `rep movsb` to an unaligned
 * destination took ten times as long as musl's aligned `rep movsq` at 4 KB, and the vector
 * loop measured faster than musl's `rep movsq` at every size up to 16 KB. */
#define FILL_STRING_INSN_MIN 2048

static inline v16 load16(const unsigned char *p)
{
	return _mm_loadu_si128((const v16 *)p);
}

static inline void store16(unsigned char *p, v16 v)
{
	_mm_storeu_si128((v16 *)p, v);
}

static inline void store16_aligned(unsigned char *p, v16 v)
{
	_mm_store_si128((v16 *)p, v);
}

/* Copies n <= 64 bytes. Every load comes before any store, so the regions may overlap. */
static inline void copy_small(void *dest, const void *src, size_t n)
{
	unsigned char *d = dest;
	const unsigned char *s = src;
	if (n > 32) {
		v16 a = load16(s), b = load16(s + 16), c = load16(s + n - 32), e = load16(s + n - 16);
		store16(d, a);
		store16(d + 16, b);
		store16(d + n - 32, c);
		store16(d + n - 16, e);
	} else if (n >= 16) {
		v16 a = load16(s), b = load16(s + n - 16);
		store16(d, a);
		store16(d + n - 16, b);
	} else if (n >= 8) {
		uint64_t a = *(const u64_unaligned *)s, b = *(const u64_unaligned *)(s + n - 8);
		*(u64_unaligned *)d = a;
		*(u64_unaligned *)(d + n - 8) = b;
	} else if (n >= 4) {
		uint32_t a = *(const u32_unaligned *)s, b = *(const u32_unaligned *)(s + n - 4);
		*(u32_unaligned *)d = a;
		*(u32_unaligned *)(d + n - 4) = b;
	} else if (n >= 2) {
		uint16_t a = *(const u16_unaligned *)s, b = *(const u16_unaligned *)(s + n - 2);
		*(u16_unaligned *)d = a;
		*(u16_unaligned *)(d + n - 2) = b;
	} else if (n == 1) {
		*d = *s;
	}
}

/*
 * Copies n > 64 bytes from low to high addresses, with aligned stores. Correct for
 * overlapping regions when d < s: each block is loaded before it is stored, and the
 * unaligned first and last 16 bytes are loaded before the loop and stored after it.
 */
static void copy_forward(void *dest, const void *src, size_t n)
{
	unsigned char *d = dest;
	const unsigned char *s = src;
	v16 head = load16(s), tail = load16(s + n - 16);
	unsigned char *start = d, *end = d + n;
	size_t skew = 16 - ((uintptr_t)d & 15);
	d += skew;
	s += skew;
	n -= skew;
	for (; n > 64; d += 64, s += 64, n -= 64) {
		v16 a = load16(s), b = load16(s + 16), c = load16(s + 32), e = load16(s + 48);
		store16_aligned(d, a);
		store16_aligned(d + 16, b);
		store16_aligned(d + 32, c);
		store16_aligned(d + 48, e);
	}
	for (; n > 16; d += 16, s += 16, n -= 16)
		store16_aligned(d, load16(s));
	store16(end - 16, tail);
	store16(start, head);
}

/* The mirror image of copy_forward, for overlapping regions with d > s. */
static void copy_backward(void *dest, const void *src, size_t n)
{
	unsigned char *d = dest;
	const unsigned char *s = src;
	v16 head = load16(s), tail = load16(s + n - 16);
	unsigned char *start = d, *end = d + n;
	size_t skew = ((uintptr_t)end & 15) ? ((uintptr_t)end & 15) : 16;
	n -= skew;
	for (; n > 64; n -= 64) {
		v16 a = load16(s + n - 64), b = load16(s + n - 48), c = load16(s + n - 32), e = load16(s + n - 16);
		store16_aligned(d + n - 16, e);
		store16_aligned(d + n - 32, c);
		store16_aligned(d + n - 48, b);
		store16_aligned(d + n - 64, a);
	}
	for (; n > 16; n -= 16)
		store16_aligned(d + n - 16, load16(s + n - 16));
	store16(start, head);
	store16(end - 16, tail);
}

void *memcpy(void *restrict dest, const void *restrict src, size_t n)
{
	if (n <= 64)
		copy_small(dest, src, n);
	else
		copy_forward(dest, src, n);
	return dest;
}

void *memmove(void *dest, const void *src, size_t n)
{
	if (n <= 64)
		copy_small(dest, src, n);
	else if ((uintptr_t)dest - (uintptr_t)src >= n)
		copy_forward(dest, src, n); /* dest is below src, or they do not overlap */
	else
		copy_backward(dest, src, n);
	return dest;
}

void *memset(void *dest, int c, size_t n)
{
	unsigned char *d = dest;
	uint64_t pattern = 0x0101010101010101ull * (unsigned char)c;
	if (n <= 16) {
		if (n >= 8) {
			*(u64_unaligned *)d = pattern;
			*(u64_unaligned *)(d + n - 8) = pattern;
		} else if (n >= 4) {
			*(u32_unaligned *)d = (uint32_t)pattern;
			*(u32_unaligned *)(d + n - 4) = (uint32_t)pattern;
		} else if (n >= 2) {
			*(u16_unaligned *)d = (uint16_t)pattern;
			*(u16_unaligned *)(d + n - 2) = (uint16_t)pattern;
		} else if (n == 1) {
			*d = (unsigned char)c;
		}
		return dest;
	}
	v16 v = _mm_set1_epi8((char)c);
	unsigned char *end = d + n;
	if (n <= 32) {
		store16(d, v);
		store16(end - 16, v);
	} else if (n <= 64) {
		store16(d, v);
		store16(d + 16, v);
		store16(end - 32, v);
		store16(end - 16, v);
	} else {
		/* Unaligned first and last 16 bytes, aligned stores in between. */
		store16(d, v);
		store16(end - 16, v);
		d += 16 - ((uintptr_t)d & 15);
		if (n >= FILL_STRING_INSN_MIN) {
			size_t words = (size_t)(end - d) / 8;
			__asm__ volatile("rep stosq" : "+D"(d), "+c"(words) : "a"(pattern) : "memory");
			return dest;
		}
		for (; end - d > 64; d += 64) {
			store16_aligned(d, v);
			store16_aligned(d + 16, v);
			store16_aligned(d + 32, v);
			store16_aligned(d + 48, v);
		}
		for (; end - d > 16; d += 16)
			store16_aligned(d, v);
	}
	return dest;
}

/* The first differing byte decides; -1 or 1 like any sign-correct memcmp. */
static inline int compare_words(uint64_t a, uint64_t b)
{
	a = __builtin_bswap64(a);
	b = __builtin_bswap64(b);
	return a < b ? -1 : 1;
}

static inline int compare16(const unsigned char *l, const unsigned char *r, int *result)
{
	unsigned equal = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(load16(l), load16(r)));
	if (equal == 0xffff)
		return 0;
	unsigned i = (unsigned)__builtin_ctz(~equal);
	*result = l[i] - r[i];
	return 1;
}

int memcmp(const void *vl, const void *vr, size_t n)
{
	const unsigned char *l = vl, *r = vr;
	int result;
	if (n >= 16) {
		for (size_t i = 0; i + 16 <= n; i += 16)
			if (compare16(l + i, r + i, &result))
				return result;
		/* The last 16 bytes, overlapping bytes already found equal. */
		if ((n & 15) && compare16(l + n - 16, r + n - 16, &result))
			return result;
		return 0;
	}
	if (n >= 8) {
		uint64_t a = *(const u64_unaligned *)l, b = *(const u64_unaligned *)r;
		if (a != b)
			return compare_words(a, b);
		a = *(const u64_unaligned *)(l + n - 8);
		b = *(const u64_unaligned *)(r + n - 8);
		return a == b ? 0 : compare_words(a, b);
	}
	if (n >= 4) {
		/* Big-endian, so that the first differing byte is the most significant. */
		uint64_t a = (uint64_t)__builtin_bswap32(*(const u32_unaligned *)l) << 32 | __builtin_bswap32(*(const u32_unaligned *)(l + n - 4));
		uint64_t b = (uint64_t)__builtin_bswap32(*(const u32_unaligned *)r) << 32 | __builtin_bswap32(*(const u32_unaligned *)(r + n - 4));
		return a == b ? 0 : (a < b ? -1 : 1);
	}
	for (; n; n--, l++, r++)
		if (*l != *r)
			return *l - *r;
	return 0;
}
