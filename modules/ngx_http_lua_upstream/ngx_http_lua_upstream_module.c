
/*
 * ngx_http_lua_upstream_module: the "ngx.upstream" Lua API over the peers
 * of nginx's http upstream blocks, for lua-nginx-module.
 *
 * Written for this project; API-compatible with the Lua module of the same
 * name shipped by OpenResty (lua-upstream-nginx-module).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <lauxlib.h>

#include "ngx_http_lua_api.h"


/*
 * A copy of the fields of one peer, taken while the peers are locked.
 * The Lua tables are built only after the lock is released: any Lua API
 * call may raise an error (out of memory) and longjmp away, and a rwlock
 * left held in a shared zone would hang every worker of the server.
 */

typedef struct {
    u_char                          name[NGX_SOCKADDR_STRLEN];
    size_t                          name_len;
    ngx_int_t                       current_weight;
    ngx_int_t                       effective_weight;
    ngx_int_t                       weight;
    ngx_uint_t                      conns;
    ngx_uint_t                      fails;
    ngx_uint_t                      max_fails;
    time_t                          accessed;
    time_t                          checked;
    time_t                          fail_timeout;
    ngx_uint_t                      down;
} ngx_http_lua_upstream_peer_snap_t;


static ngx_int_t ngx_http_lua_upstream_init(ngx_conf_t *cf);
static int ngx_http_lua_upstream_create_module(lua_State *L);
static int ngx_http_lua_upstream_get_upstreams(lua_State *L);
static int ngx_http_lua_upstream_get_servers(lua_State *L);
static int ngx_http_lua_upstream_get_primary_peers(lua_State *L);
static int ngx_http_lua_upstream_get_backup_peers(lua_State *L);
static int ngx_http_lua_upstream_get_peers(lua_State *L, ngx_uint_t backup);
static int ngx_http_lua_upstream_set_peer_down(lua_State *L);
static int ngx_http_lua_upstream_current_upstream_name(lua_State *L);
static ngx_http_upstream_main_conf_t *
    ngx_http_lua_upstream_get_umcf(lua_State *L);
static ngx_http_upstream_srv_conf_t *
    ngx_http_lua_upstream_find_upstream(lua_State *L, ngx_str_t *name);
static void ngx_http_lua_upstream_push_name(lua_State *L,
    ngx_http_upstream_srv_conf_t *uscf);
static void ngx_http_lua_upstream_push_peer(lua_State *L,
    ngx_http_lua_upstream_peer_snap_t *snap, ngx_uint_t id);


static ngx_http_module_t  ngx_http_lua_upstream_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_lua_upstream_init,            /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_lua_upstream_module = {
    NGX_MODULE_V1,
    &ngx_http_lua_upstream_module_ctx,     /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_lua_upstream_init(ngx_conf_t *cf)
{
    /*
     * A preload entry rather than a global: the table is built lazily on
     * the first require "ngx.upstream", and lua-nginx-module replays its
     * preload hooks into every Lua VM it creates (lua_code_cache off).
     */

    if (ngx_http_lua_add_package_preload(cf, "ngx.upstream",
                                         ngx_http_lua_upstream_create_module)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static int
ngx_http_lua_upstream_create_module(lua_State *L)
{
    lua_createtable(L, 0, 6);

    lua_pushcfunction(L, ngx_http_lua_upstream_get_upstreams);
    lua_setfield(L, -2, "get_upstreams");

    lua_pushcfunction(L, ngx_http_lua_upstream_get_servers);
    lua_setfield(L, -2, "get_servers");

    lua_pushcfunction(L, ngx_http_lua_upstream_get_primary_peers);
    lua_setfield(L, -2, "get_primary_peers");

    lua_pushcfunction(L, ngx_http_lua_upstream_get_backup_peers);
    lua_setfield(L, -2, "get_backup_peers");

    lua_pushcfunction(L, ngx_http_lua_upstream_set_peer_down);
    lua_setfield(L, -2, "set_peer_down");

    lua_pushcfunction(L, ngx_http_lua_upstream_current_upstream_name);
    lua_setfield(L, -2, "current_upstream_name");

    return 1;
}


static int
ngx_http_lua_upstream_get_upstreams(lua_State *L)
{
    ngx_uint_t                      i;
    ngx_http_upstream_srv_conf_t  **uscfp;
    ngx_http_upstream_main_conf_t  *umcf;

    if (lua_gettop(L) != 0) {
        return luaL_error(L, "no argument expected");
    }

    umcf = ngx_http_lua_upstream_get_umcf(L);
    if (umcf == NULL) {
        lua_createtable(L, 0, 0);
        return 1;
    }

    uscfp = umcf->upstreams.elts;

    lua_createtable(L, umcf->upstreams.nelts, 0);

    for (i = 0; i < umcf->upstreams.nelts; i++) {
        ngx_http_lua_upstream_push_name(L, uscfp[i]);
        lua_rawseti(L, -2, i + 1);
    }

    return 1;
}


static int
ngx_http_lua_upstream_get_servers(lua_State *L)
{
    ngx_str_t                      name;
    ngx_uint_t                     i, j, n;
    ngx_http_upstream_server_t    *server;
    ngx_http_upstream_srv_conf_t  *uscf;

    if (lua_gettop(L) != 1) {
        return luaL_error(L, "exactly one argument expected");
    }

    name.data = (u_char *) luaL_checklstring(L, 1, &name.len);

    uscf = ngx_http_lua_upstream_find_upstream(L, &name);
    if (uscf == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "upstream not found");
        return 2;
    }

    if (uscf->servers == NULL) {
        lua_createtable(L, 0, 0);
        return 1;
    }

    server = uscf->servers->elts;
    n = uscf->servers->nelts;

    lua_createtable(L, n, 0);

    for (i = 0; i < n; i++) {

        lua_createtable(L, 0, 7);

        lua_pushliteral(L, "addr");

        if (server[i].naddrs == 1) {
            lua_pushlstring(L, (char *) server[i].addrs[0].name.data,
                            server[i].addrs[0].name.len);

        } else {
            /* one server name that resolved to several addresses */

            lua_createtable(L, server[i].naddrs, 0);

            for (j = 0; j < server[i].naddrs; j++) {
                lua_pushlstring(L, (char *) server[i].addrs[j].name.data,
                                server[i].addrs[j].name.len);
                lua_rawseti(L, -2, j + 1);
            }
        }

        lua_rawset(L, -3);

        if (server[i].name.len) {
            lua_pushliteral(L, "name");
            lua_pushlstring(L, (char *) server[i].name.data,
                            server[i].name.len);
            lua_rawset(L, -3);
        }

        lua_pushliteral(L, "weight");
        lua_pushinteger(L, (lua_Integer) server[i].weight);
        lua_rawset(L, -3);

        lua_pushliteral(L, "max_fails");
        lua_pushinteger(L, (lua_Integer) server[i].max_fails);
        lua_rawset(L, -3);

        lua_pushliteral(L, "fail_timeout");
        lua_pushinteger(L, (lua_Integer) server[i].fail_timeout);
        lua_rawset(L, -3);

        if (server[i].backup) {
            lua_pushliteral(L, "backup");
            lua_pushboolean(L, 1);
            lua_rawset(L, -3);
        }

        if (server[i].down) {
            lua_pushliteral(L, "down");
            lua_pushboolean(L, 1);
            lua_rawset(L, -3);
        }

        lua_rawseti(L, -2, i + 1);
    }

    return 1;
}


static int
ngx_http_lua_upstream_get_primary_peers(lua_State *L)
{
    return ngx_http_lua_upstream_get_peers(L, 0);
}


static int
ngx_http_lua_upstream_get_backup_peers(lua_State *L)
{
    return ngx_http_lua_upstream_get_peers(L, 1);
}


static int
ngx_http_lua_upstream_get_peers(lua_State *L, ngx_uint_t backup)
{
    ngx_str_t                           name;
    ngx_uint_t                          i, n;
    ngx_http_upstream_rr_peer_t        *peer;
    ngx_http_upstream_rr_peers_t       *peers;
    ngx_http_upstream_srv_conf_t       *uscf;
    ngx_http_lua_upstream_peer_snap_t  *snap;

    if (lua_gettop(L) != 1) {
        return luaL_error(L, "exactly one argument expected");
    }

    name.data = (u_char *) luaL_checklstring(L, 1, &name.len);

    uscf = ngx_http_lua_upstream_find_upstream(L, &name);
    if (uscf == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "upstream not found");
        return 2;
    }

    peers = uscf->peer.data;
    if (peers == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "no peer data");
        return 2;
    }

    if (backup) {
        peers = peers->next;

        if (peers == NULL) {
            lua_createtable(L, 0, 0);
            return 1;
        }
    }

    /*
     * Open source nginx never adds or removes peers at run time, so
     * peers->number is fixed and bounds both the snapshot buffer (allocated
     * before locking, as allocation may raise a Lua error) and the walk.
     */

    n = peers->number;

    snap = lua_newuserdata(L, sizeof(ngx_http_lua_upstream_peer_snap_t)
                              * (n ? n : 1));

    /*
     * With an upstream "zone" the peers live in shared memory as a linked
     * list (peer->next) guarded by peers->rwlock, which nginx holds for
     * reading while it selects a peer; without a zone the macros are no-ops
     * and peer->next still links the per-worker array.
     */

    ngx_http_upstream_rr_peers_rlock(peers);

    for (peer = peers->peer, i = 0; peer && i < n; peer = peer->next, i++) {
        snap[i].name_len = ngx_min(peer->name.len, NGX_SOCKADDR_STRLEN);
        ngx_memcpy(snap[i].name, peer->name.data, snap[i].name_len);

        snap[i].current_weight = peer->current_weight;
        snap[i].effective_weight = peer->effective_weight;
        snap[i].weight = peer->weight;
        snap[i].conns = peer->conns;
        snap[i].fails = peer->fails;
        snap[i].max_fails = peer->max_fails;
        snap[i].accessed = peer->accessed;
        snap[i].checked = peer->checked;
        snap[i].fail_timeout = peer->fail_timeout;
        snap[i].down = peer->down;
    }

    ngx_http_upstream_rr_peers_unlock(peers);

    n = i;

    lua_createtable(L, n, 0);

    for (i = 0; i < n; i++) {
        ngx_http_lua_upstream_push_peer(L, &snap[i], i);
        lua_rawseti(L, -2, i + 1);
    }

    /* drop the snapshot userdata below the result; the GC frees it */

    lua_remove(L, -2);

    return 1;
}


static void
ngx_http_lua_upstream_push_peer(lua_State *L,
    ngx_http_lua_upstream_peer_snap_t *snap, ngx_uint_t id)
{
    lua_createtable(L, 0, 12);

    lua_pushliteral(L, "id");
    lua_pushinteger(L, (lua_Integer) id);
    lua_rawset(L, -3);

    lua_pushliteral(L, "name");
    lua_pushlstring(L, (char *) snap->name, snap->name_len);
    lua_rawset(L, -3);

    lua_pushliteral(L, "weight");
    lua_pushinteger(L, (lua_Integer) snap->weight);
    lua_rawset(L, -3);

    lua_pushliteral(L, "current_weight");
    lua_pushinteger(L, (lua_Integer) snap->current_weight);
    lua_rawset(L, -3);

    lua_pushliteral(L, "effective_weight");
    lua_pushinteger(L, (lua_Integer) snap->effective_weight);
    lua_rawset(L, -3);

    lua_pushliteral(L, "conns");
    lua_pushinteger(L, (lua_Integer) snap->conns);
    lua_rawset(L, -3);

    lua_pushliteral(L, "fails");
    lua_pushinteger(L, (lua_Integer) snap->fails);
    lua_rawset(L, -3);

    lua_pushliteral(L, "max_fails");
    lua_pushinteger(L, (lua_Integer) snap->max_fails);
    lua_rawset(L, -3);

    lua_pushliteral(L, "fail_timeout");
    lua_pushinteger(L, (lua_Integer) snap->fail_timeout);
    lua_rawset(L, -3);

    if (snap->accessed) {
        lua_pushliteral(L, "accessed");
        lua_pushinteger(L, (lua_Integer) snap->accessed);
        lua_rawset(L, -3);
    }

    if (snap->checked) {
        lua_pushliteral(L, "checked");
        lua_pushinteger(L, (lua_Integer) snap->checked);
        lua_rawset(L, -3);
    }

    if (snap->down) {
        lua_pushliteral(L, "down");
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
    }
}


static int
ngx_http_lua_upstream_set_peer_down(lua_State *L)
{
    ngx_str_t                      name;
    ngx_int_t                      id, i;
    ngx_uint_t                     backup, down;
    ngx_http_upstream_rr_peer_t   *peer;
    ngx_http_upstream_rr_peers_t  *peers;
    ngx_http_upstream_srv_conf_t  *uscf;

    if (lua_gettop(L) != 4) {
        return luaL_error(L, "exactly 4 arguments expected");
    }

    name.data = (u_char *) luaL_checklstring(L, 1, &name.len);
    backup = lua_toboolean(L, 2);
    id = luaL_checkinteger(L, 3);
    down = lua_toboolean(L, 4);

    uscf = ngx_http_lua_upstream_find_upstream(L, &name);
    if (uscf == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "upstream not found");
        return 2;
    }

    peers = uscf->peer.data;
    if (peers == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "no peer data");
        return 2;
    }

    if (backup) {
        peers = peers->next;

        if (peers == NULL) {
            lua_pushnil(L);
            lua_pushliteral(L, "no backup peers");
            return 2;
        }
    }

    if (id < 0 || (ngx_uint_t) id >= peers->number) {
        lua_pushnil(L);
        lua_pushliteral(L, "bad peer id");
        return 2;
    }

    /*
     * The write lock excludes nginx's own peer selection and release
     * (both run under the read lock plus the per-peer lock), so the
     * change is seen by every worker at once when the peers are shared.
     */

    ngx_http_upstream_rr_peers_wlock(peers);

    for (peer = peers->peer, i = 0; peer && i < id; peer = peer->next, i++) {
        /* void */
    }

    if (peer) {
        peer->down = down;

        if (!down) {
            /*
             * Forget passive failures counted while it was down, else
             * max_fails could take it out again on its first error.
             */
            peer->fails = 0;
        }
    }

    ngx_http_upstream_rr_peers_unlock(peers);

    if (peer == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "bad peer id");
        return 2;
    }

    lua_pushboolean(L, 1);
    return 1;
}


static int
ngx_http_lua_upstream_current_upstream_name(lua_State *L)
{
    ngx_http_request_t            *r;
    ngx_http_upstream_t           *u;
    ngx_http_upstream_srv_conf_t  *uscf;

    r = ngx_http_lua_get_request(L);
    if (r == NULL) {
        return luaL_error(L, "no request object found");
    }

    u = r->upstream;
    if (u == NULL) {
        lua_pushnil(L);
        return 1;
    }

    /*
     * u->upstream is set once nginx has chosen the upstream block, also
     * for proxy_pass with variables naming an upstream; u->conf->upstream
     * covers the window before ngx_http_upstream_init_request().
     */

    uscf = u->upstream;

    if (uscf == NULL && u->conf) {
        uscf = u->conf->upstream;
    }

    if (uscf == NULL) {
        lua_pushnil(L);
        return 1;
    }

    ngx_http_lua_upstream_push_name(L, uscf);

    return 1;
}


static ngx_http_upstream_main_conf_t *
ngx_http_lua_upstream_get_umcf(lua_State *L)
{
    ngx_http_request_t  *r;

    /*
     * In a request (and in the fake requests lua-nginx-module makes for
     * timers and init_worker) use the request's configuration; with no
     * request at all fall back to the running cycle, which in a worker is
     * the configuration the worker was started with.
     */

    r = ngx_http_lua_get_request(L);

    if (r && r->main_conf) {
        return ngx_http_get_module_main_conf(r, ngx_http_upstream_module);
    }

    if (ngx_cycle == NULL || ngx_cycle->conf_ctx == NULL) {
        return NULL;
    }

    return ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_upstream_module);
}


static ngx_http_upstream_srv_conf_t *
ngx_http_lua_upstream_find_upstream(lua_State *L, ngx_str_t *name)
{
    u_char                         *p;
    size_t                          len;
    ngx_int_t                       port;
    ngx_uint_t                      i;
    ngx_http_upstream_srv_conf_t  **uscfp, *uscf;
    ngx_http_upstream_main_conf_t  *umcf;

    umcf = ngx_http_lua_upstream_get_umcf(L);
    if (umcf == NULL) {
        return NULL;
    }

    uscfp = umcf->upstreams.elts;

    /* an exact match on the host wins: "upstream foo" and implicit hosts */

    for (i = 0; i < umcf->upstreams.nelts; i++) {
        uscf = uscfp[i];

        if (uscf->host.len == name->len
            && ngx_strncmp(uscf->host.data, name->data, name->len) == 0)
        {
            return uscf;
        }
    }

    /*
     * "host:port", as get_upstreams() names implicit upstreams such as
     * "127.0.0.1:8080" or "[::1]:8080": split at the last colon.
     */

    for (p = name->data + name->len; p > name->data; p--) {
        if (p[-1] == ':') {
            break;
        }
    }

    if (p == name->data) {
        return NULL;
    }

    p--;

    len = p - name->data;

    port = ngx_atoi(p + 1, name->data + name->len - p - 1);
    if (port < 1 || port > 65535) {
        return NULL;
    }

    for (i = 0; i < umcf->upstreams.nelts; i++) {
        uscf = uscfp[i];

        if (uscf->port == (in_port_t) port
            && uscf->host.len == len
            && ngx_strncmp(uscf->host.data, name->data, len) == 0)
        {
            return uscf;
        }
    }

    return NULL;
}


static void
ngx_http_lua_upstream_push_name(lua_State *L,
    ngx_http_upstream_srv_conf_t *uscf)
{
    lua_pushlstring(L, (char *) uscf->host.data, uscf->host.len);

    if (uscf->port) {
        lua_pushfstring(L, ":%d", (int) uscf->port);
        lua_concat(L, 2);
    }
}
