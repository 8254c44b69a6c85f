
/*
 * Virtual-host traffic status: vhost_traffic_status_dump path [period].
 *
 * Worker 0 writes every node of the zone to the file every period and when
 * it exits (also on a reload and on nginx -s stop / quit); a zone created
 * fresh (at start, or with a new name or size) is filled from the file.
 * The file is written to "path.tmp" and renamed, so it is always complete.
 *
 * Format: the line "ngx_http_vts_dump <version> <counters size>\n", then
 * per node: kind, group length, key length (uint32_t each), the counters
 * and the key.  A file of another version or layout is ignored (logged).
 */


#include "ngx_http_vhost_traffic_status_module.h"


#define NGX_HTTP_VTS_DUMP_VERSION  1


typedef struct {
    uint32_t                    kind;
    uint32_t                    glen;
    uint32_t                    len;
} ngx_http_vts_dump_rec_t;


static ngx_event_t  ngx_http_vts_dump_event;


static ngx_int_t
ngx_http_vts_dump_header(u_char *buf, size_t size)
{
    return ngx_snprintf(buf, size, "ngx_http_vts_dump %d %uz\n",
                        NGX_HTTP_VTS_DUMP_VERSION,
                        sizeof(ngx_http_vts_counters_t)) - buf;
}


ngx_int_t
ngx_http_vts_dump_write(ngx_http_vts_ctx_t *ctx, ngx_str_t *path,
    ngx_log_t *log)
{
    u_char                   *buf, *p, *tmp;
    size_t                    size;
    ngx_fd_t                  fd;
    ngx_rbtree_t             *tree;
    ngx_rbtree_node_t        *node;
    ngx_http_vts_node_t      *vn;
    ngx_http_vts_dump_rec_t   rec;

    if (ctx == NULL || ctx->sh == NULL) {
        return NGX_DECLINED;
    }

    tree = &ctx->sh->rbtree;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    size = 64;

    if (tree->root != tree->sentinel) {
        for (node = ngx_rbtree_min(tree->root, tree->sentinel);
             node != NULL;
             node = ngx_rbtree_next(tree, node))
        {
            vn = (ngx_http_vts_node_t *) node;
            size += sizeof(rec) + sizeof(ngx_http_vts_counters_t) + vn->len;
        }
    }

    buf = ngx_alloc(size, log);
    if (buf == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_ERROR;
    }

    p = buf + ngx_http_vts_dump_header(buf, 64);

    if (tree->root != tree->sentinel) {
        for (node = ngx_rbtree_min(tree->root, tree->sentinel);
             node != NULL;
             node = ngx_rbtree_next(tree, node))
        {
            vn = (ngx_http_vts_node_t *) node;

            rec.kind = (uint32_t) vn->kind;
            rec.glen = (uint32_t) vn->glen;
            rec.len = (uint32_t) vn->len;

            p = ngx_cpymem(p, &rec, sizeof(rec));
            p = ngx_cpymem(p, &vn->counters, sizeof(ngx_http_vts_counters_t));
            p = ngx_cpymem(p, vn->data, vn->len);
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    tmp = ngx_alloc(path->len + sizeof(".tmp"), log);
    if (tmp == NULL) {
        ngx_free(buf);
        return NGX_ERROR;
    }

    ngx_sprintf(tmp, "%V.tmp%Z", path);

    fd = ngx_open_file(tmp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                       NGX_FILE_DEFAULT_ACCESS);

    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "vhost_traffic_status_dump: cannot write \"%s\"", tmp);
        ngx_free(tmp);
        ngx_free(buf);
        return NGX_ERROR;
    }

    if (ngx_write_fd(fd, buf, p - buf) != p - buf) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "vhost_traffic_status_dump: writing \"%s\" failed", tmp);
        (void) ngx_close_file(fd);
        ngx_free(tmp);
        ngx_free(buf);
        return NGX_ERROR;
    }

    (void) ngx_close_file(fd);

    if (ngx_rename_file(tmp, path->data) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "vhost_traffic_status_dump: renaming \"%s\" to \"%V\" "
                      "failed", tmp, path);
    }

    ngx_free(tmp);
    ngx_free(buf);

    return NGX_OK;
}


/* fills a fresh zone from the file, if there is one; the lock is not held */

void
ngx_http_vts_dump_restore(ngx_http_vts_ctx_t *ctx, ngx_str_t *path,
    ngx_log_t *log)
{
    u_char                   *buf, *p, *last;
    u_char                    hdr[64];
    size_t                    hlen;
    ssize_t                   n;
    ngx_fd_t                  fd;
    ngx_uint_t                restored;
    ngx_file_info_t           fi;
    ngx_http_vts_node_t      *vn;
    ngx_http_vts_dump_rec_t   rec;

    fd = ngx_open_file(path->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        return;     /* no dump yet */
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR || ngx_file_size(&fi) <= 0) {
        (void) ngx_close_file(fd);
        return;
    }

    buf = ngx_alloc((size_t) ngx_file_size(&fi), log);
    if (buf == NULL) {
        (void) ngx_close_file(fd);
        return;
    }

    n = ngx_read_fd(fd, buf, (size_t) ngx_file_size(&fi));
    (void) ngx_close_file(fd);

    hlen = ngx_http_vts_dump_header(hdr, sizeof(hdr));

    if (n < (ssize_t) hlen || ngx_memcmp(buf, hdr, hlen) != 0) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "vhost_traffic_status_dump: \"%V\" is not a dump of "
                      "this version, not restored", path);
        ngx_free(buf);
        return;
    }

    p = buf + hlen;
    last = buf + n;
    restored = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    while ((size_t) (last - p) >= sizeof(rec) + sizeof(ngx_http_vts_counters_t))
    {
        ngx_memcpy(&rec, p, sizeof(rec));

        if (rec.glen > rec.len || rec.len > 2 * NGX_HTTP_VTS_MAX_KEY_LEN
            || rec.kind < NGX_HTTP_VTS_KIND_SERVER
            || rec.kind > NGX_HTTP_VTS_KIND_FILTER
            || (size_t) (last - p) < sizeof(rec)
                                     + sizeof(ngx_http_vts_counters_t)
                                     + rec.len)
        {
            break;
        }

        vn = ngx_http_vts_node_get_locked(ctx, rec.kind,
                                 p + sizeof(rec)
                                 + sizeof(ngx_http_vts_counters_t),
                                 rec.len, rec.glen);
        if (vn == NULL) {
            break;
        }

        ngx_memcpy(&vn->counters, p + sizeof(rec),
                   sizeof(ngx_http_vts_counters_t));
        restored++;

        p += sizeof(rec) + sizeof(ngx_http_vts_counters_t) + rec.len;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "vhost_traffic_status_dump: restored %ui zones from \"%V\"",
                  restored, path);

    ngx_free(buf);
}


static void
ngx_http_vts_dump_timer(ngx_event_t *ev)
{
    ngx_http_vts_main_conf_t  *vmcf = ev->data;

    (void) ngx_http_vts_dump_write(vmcf->shm_zone->data, &vmcf->dump_file,
                                   ev->log);

    if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(ev, vmcf->dump_period);
    }
}


ngx_int_t
ngx_http_vts_dump_init_process(ngx_cycle_t *cycle)
{
    ngx_http_vts_main_conf_t  *vmcf;

    if (ngx_process != NGX_PROCESS_WORKER || ngx_worker != 0) {
        return NGX_OK;
    }

    vmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                         ngx_http_vhost_traffic_status_module);

    if (vmcf == NULL || vmcf->shm_zone == NULL || vmcf->dump_file.len == 0) {
        return NGX_OK;
    }

    ngx_http_vts_dump_event.handler = ngx_http_vts_dump_timer;
    ngx_http_vts_dump_event.data = vmcf;
    ngx_http_vts_dump_event.log = cycle->log;
    ngx_http_vts_dump_event.cancelable = 1;

    ngx_add_timer(&ngx_http_vts_dump_event, vmcf->dump_period);

    return NGX_OK;
}


void
ngx_http_vts_dump_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_vts_main_conf_t  *vmcf;

    if (ngx_process != NGX_PROCESS_WORKER || ngx_worker != 0) {
        return;
    }

    vmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                         ngx_http_vhost_traffic_status_module);

    if (vmcf == NULL || vmcf->shm_zone == NULL || vmcf->dump_file.len == 0) {
        return;
    }

    (void) ngx_http_vts_dump_write(vmcf->shm_zone->data, &vmcf->dump_file,
                                   cycle->log);
}


char *
ngx_http_vts_dump(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = conf;

    ngx_str_t   *value;
    ngx_msec_t   period;

    if (vmcf->dump_file.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    vmcf->dump_file = value[1];

    if (ngx_conf_full_name(cf->cycle, &vmcf->dump_file, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    vmcf->dump_period = 60000;

    if (cf->args->nelts == 3) {
        period = ngx_parse_time(&value[2], 0);

        if (period == (ngx_msec_t) NGX_ERROR || period == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid period \"%V\" in \"%V\"; give a time "
                               "such as 10s or 1m", &value[2], &cmd->name);
            return NGX_CONF_ERROR;
        }

        vmcf->dump_period = period;
    }

    return NGX_CONF_OK;
}
