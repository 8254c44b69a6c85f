/*
 * The C library's allocator for every static link: mimalloc in place of musl's mallocng.
 *
 * mallocng returns freed memory to the kernel eagerly (madvise, munmap). nginx creates and
 * destroys a pool per connection and per request, and OpenSSL (with nginx's
 * SSL_MODE_RELEASE_BUFFERS) allocates and frees a 16 KB+ record buffer per TLS record, so
 * under mallocng every request costs system calls and page faults. mimalloc keeps freed pages
 * in thread-local free lists and returns them lazily.
 *
 * This single translation unit is linked as a plain object ahead of every archive (see the
 * specs' *startfile), so its definitions win and none of libc.a's malloc members is ever pulled in: one
 * allocator serves the program, libc's public functions (strdup, getline, fopen, ...) and
 * musl's internal callers, which call __libc_malloc and friends directly (atexit, locale,
 * time zone, aio, sem_open).
 */

/* mimalloc's sources in one unit; with MI_MALLOC_OVERRIDE they define malloc, free, calloc,
 * realloc, posix_memalign, memalign, valloc, pvalloc, reallocarray and malloc_usable_size. */
#include "static.c"

/* mimalloc defines aligned_alloc only when glibc's __USE_ISOC11 is set. */
mi_decl_export void *aligned_alloc(size_t alignment, size_t size)
{
	return mi_aligned_alloc(alignment, size);
}

/* musl's internal entry points (hidden in libc.a, so hidden here too). */
__attribute__((visibility("hidden"))) void *__libc_malloc(size_t size)
{
	return mi_malloc(size);
}

__attribute__((visibility("hidden"))) void *__libc_calloc(size_t count, size_t size)
{
	return mi_calloc(count, size);
}

__attribute__((visibility("hidden"))) void *__libc_realloc(void *p, size_t size)
{
	return mi_realloc(p, size);
}

__attribute__((visibility("hidden"))) void __libc_free(void *p)
{
	mi_free(p);
}

/*
 * libgcc's unwinder (libgcc_eh, used by every LuaJIT error and trace) reaches the pthread
 * functions through weak references and takes its locks only when pthread_key_create is
 * linked. mimalloc links pthread_key_create (for its thread-exit hook), so a program that
 * has no threads of its own (the luajit compiler) would then call the lock functions through
 * null weak references. Linking them here keeps the unwinder's two cases consistent.
 */
#include <pthread.h>
__attribute__((used)) static void *const libgcc_thread_functions[] = {
	(void *)pthread_mutex_lock,
	(void *)pthread_mutex_unlock,
	(void *)pthread_once,
	(void *)pthread_getspecific,
	(void *)pthread_setspecific,
	(void *)pthread_key_create,
};
