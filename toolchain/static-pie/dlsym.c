/*
 * dlsym() that works inside a fully static (static-PIE) musl executable.
 *
 * WHY: musl's static libc.a carries only a stub dlsym() that always fails.
 * LuaJIT needs a working one:
 *   - ffi.C.<name> resolves C symbols with dlsym(RTLD_DEFAULT, name);
 *     resty.core calls ffi.C.ngx_http_lua_ffi_* and nginx refuses to start
 *     without them ("Symbol not found: ngx_http_lua_ffi_var_get");
 *   - require() finds Lua modules linked in as bytecode by looking up
 *     luaJIT_BC_<name> with dlsym().
 *
 * HOW: a static-PIE still has a .dynsym/.dynstr with a GNU (or SysV) hash
 * table, and linking with -Wl,-E (nginx and LuaJIT add it on Linux) puts
 * every global symbol there.  Unlike .symtab, .dynsym survives `strip`.
 * We find our own PT_DYNAMIC through dl_iterate_phdr, read DT_SYMTAB,
 * DT_STRTAB and DT_GNU_HASH/DT_HASH from it and add the load base.
 *
 * Linked with -Wl,--wrap=dlsym: every call to dlsym() lands here; names we
 * do not define are passed on to musl's dlsym (__real_dlsym), so error
 * reporting through dlerror() keeps working.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

void *__real_dlsym(void *restrict handle, const char *restrict name);
void *__wrap_dlsym(void *restrict handle, const char *restrict name);

struct lookup {
	const char *name;
	void *addr;
};

/* Dynamic-section pointers are link-time addresses: musl's static-PIE
 * startup (rcrt1.o) only applies relocations and leaves .dynamic alone.
 * A dynamic loader such as glibc's may already have added the base,
 * hence the check. */
static const void *dynptr(ElfW(Addr) base, ElfW(Addr) p)
{
	return (const void *)(p < base ? base + p : p);
}

static int usable(const ElfW(Sym) *s)
{
	int bind = ELF64_ST_BIND(s->st_info), type = ELF64_ST_TYPE(s->st_info);

	if (s->st_shndx == SHN_UNDEF)
		return 0;
	if (bind != STB_GLOBAL && bind != STB_WEAK && bind != STB_GNU_UNIQUE)
		return 0;
	/* TLS symbols would need the thread pointer; nobody looks them up. */
	return type == STT_FUNC || type == STT_OBJECT || type == STT_NOTYPE ||
	       type == STT_COMMON;
}

static const ElfW(Sym) *gnu_lookup(const uint32_t *ht, const ElfW(Sym) *syms,
				   const char *strs, const char *name)
{
	uint32_t nbuckets = ht[0], symoffset = ht[1], bloom_size = ht[2];
	const uint32_t *buckets = (const uint32_t *)
		((const ElfW(Addr) *)(ht + 4) + bloom_size);
	const uint32_t *chain = buckets + nbuckets;
	uint32_t h = 5381, i;
	const unsigned char *c;

	for (c = (const unsigned char *)name; *c; c++)
		h = h * 33 + *c;
	if (!nbuckets || !(i = buckets[h % nbuckets]))
		return NULL;
	for (;; i++) {
		uint32_t h2 = chain[i - symoffset];
		if ((h | 1) == (h2 | 1) && !strcmp(name, strs + syms[i].st_name)
		    && usable(&syms[i]))
			return &syms[i];
		if (h2 & 1)
			return NULL; /* end of this bucket's chain */
	}
}

static const ElfW(Sym) *sysv_lookup(const uint32_t *ht, const ElfW(Sym) *syms,
				    const char *strs, const char *name)
{
	uint32_t nbucket = ht[0], h = 0, g, i;
	const uint32_t *bucket = ht + 2, *chain = bucket + nbucket;
	const unsigned char *c;

	for (c = (const unsigned char *)name; *c; c++) {
		h = (h << 4) + *c;
		g = h & 0xf0000000;
		h ^= g >> 24;
		h &= ~g;
	}
	if (!nbucket)
		return NULL;
	for (i = bucket[h % nbucket]; i != STN_UNDEF; i = chain[i])
		if (!strcmp(name, strs + syms[i].st_name) && usable(&syms[i]))
			return &syms[i];
	return NULL;
}

static int visit(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct lookup *q = arg;
	const ElfW(Dyn) *dyn = NULL;
	const ElfW(Sym) *syms = NULL, *s = NULL;
	const char *strs = NULL;
	const uint32_t *gnu = NULL, *sysv = NULL;
	ElfW(Addr) base = info->dlpi_addr;
	size_t i;

	(void)size;
	for (i = 0; i < info->dlpi_phnum; i++)
		if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
			dyn = (const void *)(base + info->dlpi_phdr[i].p_vaddr);
	if (!dyn)
		return 0;

	for (; dyn->d_tag != DT_NULL; dyn++) {
		switch (dyn->d_tag) {
		case DT_SYMTAB:   syms = dynptr(base, dyn->d_un.d_ptr); break;
		case DT_STRTAB:   strs = dynptr(base, dyn->d_un.d_ptr); break;
		case DT_GNU_HASH: gnu = dynptr(base, dyn->d_un.d_ptr); break;
		case DT_HASH:     sysv = dynptr(base, dyn->d_un.d_ptr); break;
		}
	}
	if (!syms || !strs)
		return 0;
	if (gnu)
		s = gnu_lookup(gnu, syms, strs, q->name);
	else if (sysv)
		s = sysv_lookup(sysv, syms, strs, q->name);
	if (!s)
		return 0;

	q->addr = (void *)(s->st_shndx == SHN_ABS ? s->st_value
						   : base + s->st_value);
	return 1;
}

void *__wrap_dlsym(void *restrict handle, const char *restrict name)
{
	/* Only the global namespace means "this executable"; any other
	 * handle can only have come from musl's (failing) static dlopen. */
	if (handle == RTLD_DEFAULT && name) {
		struct lookup q = { name, NULL };
		if (dl_iterate_phdr(visit, &q))
			return q.addr;
	}
	return __real_dlsym(handle, name);
}
