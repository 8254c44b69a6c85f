#include <stdio.h>
#include <string.h>
#include <stdlib.h>
/* memcpy, memset and memmove at every size up to 600 and a spread of larger ones, at every
 * alignment of source and destination in a 32-byte window, memmove at every overlap distance
 * in both directions, and memcmp's sign for a difference at every position (both orders, and
 * bytes on both sides of 0x80), compared with byte-by-byte reference loops. Guard bytes
 * around every destination must stay untouched. */
#define WINDOW 32
#define MAX 20000
static unsigned char src[MAX + 3 * WINDOW], dst[MAX + 3 * WINDOW], ref[MAX + 3 * WINDOW];
static size_t sizes[700];
static size_t nsizes;
static long cases;

/* The reference: plain byte loops (compiled with -fno-tree-loop-distribute-patterns, so
 * they stay loops and never call the functions under test). */
static void byte_copy(unsigned char *d, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		d[i] = s[i];
}

static int byte_compare(const unsigned char *l, const unsigned char *r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (l[i] != r[i])
			return l[i] < r[i] ? -1 : 1;
	return 0;
}

static int sign(int v)
{
	return (v > 0) - (v < 0);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(seed * 131 + i * 7 + (i >> 8));
}

static void fail(const char *what, size_t n, size_t a, size_t b)
{
	printf("FAIL %s n=%zu offsets=%zu,%zu\n", what, n, a, b);
	exit(1);
}

int main(void)
{
	for (size_t n = 0; n <= 600; n++) sizes[nsizes++] = n;
	size_t big[] = {1000, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097, 8191, 16384, 16411, MAX};
	for (size_t i = 0; i < sizeof big / sizeof *big; i++) sizes[nsizes++] = big[i];
	for (size_t k = 0; k < nsizes; k++) {
		size_t n = sizes[k];
		size_t step = n > 600 ? 7 : 1;
		for (size_t so = 0; so < WINDOW; so += step)
			for (size_t d = 0; d < WINDOW; d += step) {
				fill(src, sizeof src, (unsigned)(n + so));
				fill(dst, sizeof dst, 0xA5);
				byte_copy(ref, dst, sizeof dst);
				for (size_t i = 0; i < n; i++) ref[WINDOW + d + i] = src[so + i];
				if (memcpy(dst + WINDOW + d, src + so, n) != dst + WINDOW + d) fail("memcpy return", n, so, d);
				if (byte_compare(dst, ref, sizeof dst)) fail("memcpy", n, so, d);
				byte_copy(ref, dst, sizeof dst);
				for (size_t i = 0; i < n; i++) ref[WINDOW + d + i] = (unsigned char)(n + so);
				if (memset(dst + WINDOW + d, (int)(n + so) | 0x100, n) != dst + WINDOW + d) fail("memset return", n, so, d);
				if (byte_compare(dst, ref, sizeof dst)) fail("memset", n, so, d);
				cases += 2;
			}
		/* memcmp: equal, then one differing byte at each position, either way round. */
		for (size_t so = 0; so < WINDOW; so += (n > 100 ? 7 : 1)) {
			unsigned char *l = src + so, *r = dst + WINDOW + (so * 5) % WINDOW;
			fill(l, n, (unsigned)n);
			byte_copy(r, l, n);
			if (memcmp(l, r, n) != 0) fail("memcmp equal", n, so, 0);
			for (size_t at = 0; at < n; at += (n > 64 ? 13 : 1)) {
				unsigned char keep = r[at];
				for (int k = 0; k < 2; k++) {
					r[at] = k ? (unsigned char)(l[at] ^ 0x80) : (unsigned char)(l[at] + 1);
					if (sign(memcmp(l, r, n)) != byte_compare(l, r, n)) fail("memcmp", n, so, at);
					if (sign(memcmp(r, l, n)) != byte_compare(r, l, n)) fail("memcmp reversed", n, so, at);
					cases += 2;
				}
				r[at] = keep;
			}
		}
		/* memmove within one buffer: destination from 2*WINDOW below to 2*WINDOW above. */
		for (long shift = -2 * WINDOW; shift <= 2 * WINDOW; shift += (n > 600 ? 5 : 1)) {
			size_t at = 2 * WINDOW;
			if (n + at + 2 * WINDOW > sizeof dst) continue;
			fill(dst, sizeof dst, (unsigned)n);
			byte_copy(ref, dst, sizeof dst);
			for (size_t i = 0; i < n; i++) src[i] = ref[at + i];
			for (size_t i = 0; i < n; i++) ref[at + shift + i] = src[i];
			if (memmove(dst + at + shift, dst + at, n) != dst + at + shift) fail("memmove return", n, at, (size_t)shift);
			if (byte_compare(dst, ref, sizeof dst)) fail("memmove", n, at, (size_t)shift);
			cases++;
		}
	}
	printf("ok %ld cases\n", cases);
	return 0;
}
