/*
 * _dl_find_object() for fully static musl executables.
 *
 * WHY: Debian's gcc 12 builds libgcc_eh.a (the static unwinder) against
 * glibc >= 2.35, so its FDE lookup (unwind-dw2-fde-dip.c) calls glibc's
 * _dl_find_object() and, when that fails, gives up: there is no fallback
 * to dl_iterate_phdr.  musl has no _dl_find_object, so
 *   - without this file every link that pulls in the unwinder fails
 *     (LuaJIT uses _Unwind_RaiseException for Lua errors; nginx's LuaJIT
 *     feature test then fails with a misleading "unsupported LuaJIT build");
 *   - a stub returning -1 would link but make every Lua error() abort.
 *
 * WHAT: find the loaded object whose PT_LOAD segments contain PC (via
 * dl_iterate_phdr, which musl implements for static programs too) and
 * report its PT_GNU_EH_FRAME segment (.eh_frame_hdr, emitted because the
 * toolchain links with --eh-frame-hdr).  That is all libgcc reads on
 * x86_64; dlfo_link_map stays NULL.
 *
 * The struct mirrors glibc's <dlfcn.h> layout for x86_64 (no dlfo_eh_dbase,
 * no dlfo_eh_count there); musl's headers do not declare it.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stddef.h>
#include <stdint.h>

struct dl_find_object {
	unsigned long long dlfo_flags;
	void *dlfo_map_start;
	void *dlfo_map_end;
	struct link_map *dlfo_link_map;
	void *dlfo_eh_frame;
	unsigned long long __dlfo_reserved[7];
};

int _dl_find_object(void *pc, struct dl_find_object *result);

struct query {
	uintptr_t pc;
	struct dl_find_object *out;
};

static int visit(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct query *q = arg;
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	void *eh = NULL;
	int hit = 0;
	size_t i;

	(void)size;
	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t start = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type == PT_LOAD) {
			uintptr_t end = start + ph->p_memsz;
			if (start < lo)
				lo = start;
			if (end > hi)
				hi = end;
			if (q->pc >= start && q->pc < end)
				hit = 1;
		} else if (ph->p_type == PT_GNU_EH_FRAME) {
			eh = (void *)start;
		}
	}
	if (!hit)
		return 0; /* keep iterating */

	q->out->dlfo_flags = 0;
	q->out->dlfo_map_start = (void *)lo;
	q->out->dlfo_map_end = (void *)hi;
	q->out->dlfo_link_map = NULL;
	q->out->dlfo_eh_frame = eh;
	return 1; /* stop: found */
}

int _dl_find_object(void *pc, struct dl_find_object *result)
{
	struct query q = { (uintptr_t)pc, result };

	return dl_iterate_phdr(visit, &q) ? 0 : -1;
}
