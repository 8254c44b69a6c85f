/*
 * Make RELRO read-only in a static-PIE musl executable.
 *
 * WHY: `-z relro -z now` only lays the binary out for RELRO: it groups the
 * data that is written solely by relocation processing (.got, .init_array,
 * .fini_array, .data.rel.ro, .dynamic) into a PT_GNU_RELRO range.  It is the
 * dynamic loader that mprotect()s that range read-only afterwards.  A
 * static-PIE has no loader: musl's rcrt1.o relocates the image itself and
 * never looks at PT_GNU_RELRO, so the range stays writable (checked in
 * /proc/self/maps).  This constructor does the loader's job.
 *
 * It is linked as a plain object from the specs' startfile list (an
 * archive member would only be pulled in if something referenced it).
 * By the time constructors run, rcrt1.o has applied every relocation and,
 * the binary being linked with -z now, nothing writes that range again.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/mman.h>

static int protect(struct dl_phdr_info *info, size_t size, void *arg)
{
	uintptr_t page = getauxval(AT_PAGESZ), start, end;
	size_t i;

	(void)size;
	(void)arg;
	if (!page)
		page = 4096;
	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_GNU_RELRO)
			continue;
		/* Same rounding as a dynamic loader: both ends down to a page,
		 * so a partially covered last page stays writable. */
		start = (info->dlpi_addr + ph->p_vaddr) & -page;
		end = (info->dlpi_addr + ph->p_vaddr + ph->p_memsz) & -page;
		if (end > start)
			mprotect((void *)start, end - start, PROT_READ);
	}
	return 1; /* the first object is the executable itself: stop */
}

__attribute__((constructor(101))) static void staticpie_relro(void)
{
	dl_iterate_phdr(protect, 0);
}
