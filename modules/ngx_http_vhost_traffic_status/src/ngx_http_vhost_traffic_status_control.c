
/*
 * Virtual-host traffic status: the reset and delete commands of the
 * control API (".../control?cmd=reset|delete&group=...&zone=...").
 *
 * Groups and zone names: server (name, "*"), filter (group@key, "*"),
 * upstream@group (upstream@peer, "*"), upstream@alone ([@]peer, "*"),
 * cache (proxy_cache zones by name) and "*" (everything).
 * The sum zone always exists: it is reset instead of deleted, and a
 * single server zone's counters are taken out of it, so it stays the sum.
 */


#include "ngx_http_vhost_traffic_status_module.h"


#define NGX_HTTP_VTS_CMD_RESET   1
#define NGX_HTTP_VTS_CMD_DELETE  2


static void
ngx_http_vts_counters_sub(ngx_http_vts_counters_t *sum,
    ngx_http_vts_counters_t *c)
{
    ngx_uint_t  i;

#define ngx_http_vts_sub(field)                                               \
    sum->field = (sum->field > c->field) ? sum->field - c->field : 0

    ngx_http_vts_sub(requests);
    ngx_http_vts_sub(in_bytes);
    ngx_http_vts_sub(out_bytes);
    ngx_http_vts_sub(request_msec);
    ngx_http_vts_sub(response_msec);

    for (i = 0; i < 5; i++) {
        ngx_http_vts_sub(responses[i]);
    }

    for (i = 0; i < NGX_HTTP_VTS_CACHE_STATUSES; i++) {
        ngx_http_vts_sub(cache[i]);
    }

#undef ngx_http_vts_sub
}


static void
ngx_http_vts_counters_reset(ngx_http_vts_counters_t *c)
{
    uint64_t  last;

    last = c->last_msec;
    ngx_memzero(c, sizeof(ngx_http_vts_counters_t));
    c->last_msec = last;
}


/*
 * Which kind a group names, and the group / name parts of a zone
 * ("*" matches every zone of the kind).
 */

static ngx_int_t
ngx_http_vts_control_target(ngx_str_t *group, ngx_str_t *zone,
    ngx_uint_t *kind, ngx_uint_t *all, ngx_str_t *g, ngx_str_t *n)
{
    u_char  *at;

    *all = (zone->len == 1 && zone->data[0] == '*');
    g->len = 0;
    g->data = NULL;
    *n = *zone;

    if (group->len == 1 && group->data[0] == '*') {
        *kind = 0;
        *all = 1;
        return NGX_OK;
    }

    if (group->len == 6 && ngx_strncmp(group->data, "server", 6) == 0) {
        *kind = NGX_HTTP_VTS_KIND_SERVER;
        return NGX_OK;
    }

    if (group->len == 5 && ngx_strncmp(group->data, "cache", 5) == 0) {
        *kind = NGX_HTTP_VTS_KIND_CACHE;
        return NGX_OK;
    }

    if (group->len == 14
        && ngx_strncmp(group->data, "upstream@alone", 14) == 0)
    {
        *kind = NGX_HTTP_VTS_KIND_NOGROUPS;
        ngx_str_set(g, NGX_HTTP_VTS_NOGROUPS_NAME);

        if (!*all && n->len && n->data[0] == '@') {
            n->data++;
            n->len--;
        }

        return NGX_OK;
    }

    if (group->len == 6 && ngx_strncmp(group->data, "filter", 6) == 0) {
        *kind = NGX_HTTP_VTS_KIND_FILTER;

    } else if (group->len == 14
               && ngx_strncmp(group->data, "upstream@group", 14) == 0)
    {
        *kind = NGX_HTTP_VTS_KIND_UPSTREAM;

    } else {
        return NGX_DECLINED;
    }

    if (*all) {
        return NGX_OK;
    }

    at = ngx_strlchr(zone->data, zone->data + zone->len, '@');

    if (at == NULL) {
        return NGX_DECLINED;
    }

    g->data = zone->data;
    g->len = at - zone->data;
    n->data = at + 1;
    n->len = zone->data + zone->len - n->data;

    return NGX_OK;
}


static ngx_uint_t
ngx_http_vts_control_match(ngx_http_vts_node_t *vn, ngx_uint_t kind,
    ngx_uint_t all, ngx_str_t *g, ngx_str_t *n)
{
    if (kind == 0) {
        return 1;
    }

    if (kind == NGX_HTTP_VTS_KIND_SERVER) {
        if (vn->kind == NGX_HTTP_VTS_KIND_SUM) {
            return all;
        }

    }

    if (vn->kind != kind) {
        return 0;
    }

    if (all) {
        return 1;
    }

    return vn->glen == g->len
           && vn->len - vn->glen == n->len
           && ngx_strncmp(vn->data, g->data, g->len) == 0
           && ngx_strncmp(vn->data + vn->glen, n->data, n->len) == 0;
}


ngx_int_t
ngx_http_vts_control(ngx_http_request_t *r, ngx_str_t *cmd, ngx_str_t *group,
    ngx_str_t *zone, ngx_uint_t *count)
{
    ngx_uint_t                 op, kind, all, i, n;
    ngx_str_t                  g, name;
    ngx_rbtree_t              *tree;
    ngx_rbtree_node_t         *node;
    ngx_http_vts_ctx_t        *ctx;
    ngx_http_vts_node_t       *vn, *sum, **hits;
    ngx_http_vts_main_conf_t  *vmcf;

    *count = 0;

    if (cmd->len == 5 && ngx_strncmp(cmd->data, "reset", 5) == 0) {
        op = NGX_HTTP_VTS_CMD_RESET;

    } else if (cmd->len == 6 && ngx_strncmp(cmd->data, "delete", 6) == 0) {
        op = NGX_HTTP_VTS_CMD_DELETE;

    } else {
        return NGX_DECLINED;
    }

    if (ngx_http_vts_control_target(group, zone, &kind, &all, &g, &name)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    vmcf = ngx_http_get_module_main_conf(r,
                                         ngx_http_vhost_traffic_status_module);
    ctx = vmcf->shm_zone->data;
    tree = &ctx->sh->rbtree;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    hits = ngx_palloc(r->pool, (ctx->sh->nodes + 1) * sizeof(void *));
    if (hits == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_ERROR;
    }

    n = 0;
    sum = NULL;

    if (tree->root != tree->sentinel) {
        for (node = ngx_rbtree_min(tree->root, tree->sentinel);
             node != NULL && n < ctx->sh->nodes;
             node = ngx_rbtree_next(tree, node))
        {
            vn = (ngx_http_vts_node_t *) node;

            if (vn->kind == NGX_HTTP_VTS_KIND_SUM) {
                sum = vn;
            }

            if (ngx_http_vts_control_match(vn, kind, all, &g, &name)) {
                hits[n++] = vn;
            }
        }
    }

    for (i = 0; i < n; i++) {
        vn = hits[i];

        if (vn->kind == NGX_HTTP_VTS_KIND_SERVER && sum != NULL
            && !(all && (kind == 0 || kind == NGX_HTTP_VTS_KIND_SERVER)))
        {
            ngx_http_vts_counters_sub(&sum->counters, &vn->counters);
        }

        if (op == NGX_HTTP_VTS_CMD_DELETE
            && vn->kind != NGX_HTTP_VTS_KIND_SUM)
        {
            ngx_http_vts_node_delete_locked(ctx, vn);

        } else {
            ngx_http_vts_counters_reset(&vn->counters);
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    *count = n;

    return NGX_OK;
}
