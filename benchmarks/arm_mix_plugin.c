/*
 * QEMU TCG plugin: executed aarch64 instructions by form (mnemonic and first operand's
 * register kind), for benchmarks/arm_instructions.py.
 *
 * Why: the instruction count alone says how much code ran, not what kind; the share of
 * 4-lane NEON arithmetic (fmla v.4s) against scalar floating point (fmadd s) is what
 * tells vectorised code from scalarised code. QEMU's own examples count instructions
 * (tests/plugin/insn.c) or coarse encoding classes (contrib/plugins/howvec.c, which
 * lumps scalar FP and Advanced SIMD together); this one keys each instruction by its
 * disassembly when it is translated, so execution only adds one to a counter inline.
 *
 * Output at exit (QEMU's plugin log, -d plugin -D FILE): one line "mix COUNT KEY" per
 * form executed, KEY = "mnemonic kind" with kind ".4s", ".2d", ... (a vector
 * arrangement), "q", "d", "s", "h", "b" (a SIMD&FP register), "x", "w" (general) or
 * "-" (no register operand first), then "total COUNT". With the argument "pc=on" it also
 * counts each instruction address on its own and prints "pc VADDR COUNT KEY" for every
 * address executed at least "min=N" times (default 1000): the hot code, to be mapped to
 * the functions of a loaded library (its load address from the guest's /proc/self/maps).
 *
 * Built against QEMU 7.2's include/qemu/qemu-plugin.h (Debian's qemu source package):
 *   gcc -shared -fPIC -O2 -I include/qemu $(pkg-config --cflags glib-2.0) arm_mix_plugin.c \
 *       -o libarmmix.so $(pkg-config --libs glib-2.0)
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <glib.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* key (owned) -> uint64_t counter (owned); counters never move once made */
static GHashTable *counters;
static GMutex lock;

/* pc=on: one record per translated instruction (re-translations get records of their own) */
typedef struct {
    uint64_t vaddr;
    uint64_t count;
    const char *key;
} PcCount;

static bool per_pc;
static uint64_t min_count = 1000;
static GPtrArray *pcs;

/* The kind of the first operand of a disassembled instruction ("fmla v0.4s, ..."). */
static void operand_kind(const char *ops, char *out, size_t size)
{
    while (*ops == ' ' || *ops == '{' || *ops == '\t') {
        ops++;
    }
    if (*ops == 'v' && isdigit((unsigned char)ops[1])) {
        const char *dot = ops + 1;
        while (isdigit((unsigned char)*dot)) {
            dot++;
        }
        if (*dot == '.') {
            size_t n = strcspn(dot, ",}[ ");
            g_strlcpy(out, dot, MIN(size, n + 1));
            return;
        }
        g_strlcpy(out, "v", size);
        return;
    }
    if (strchr("qdshbxw", *ops) && *ops && (isdigit((unsigned char)ops[1]) || !strncmp(ops + 1, "zr", 2))) {
        out[0] = *ops;
        out[1] = 0;
        return;
    }
    if (!strncmp(ops, "sp", 2) && (ops[2] == ',' || ops[2] == 0)) {
        g_strlcpy(out, "x", size);
        return;
    }
    g_strlcpy(out, "-", size);
}

static uint64_t *counter_for(const char *disas, const char **key_out)
{
    char mnemonic[32], kind[16], key[64];
    size_t n = strcspn(disas, " \t");
    g_strlcpy(mnemonic, disas, MIN(sizeof(mnemonic), n + 1));
    operand_kind(disas + n, kind, sizeof(kind));
    g_snprintf(key, sizeof(key), "%s %s", mnemonic, kind);

    g_mutex_lock(&lock);
    uint64_t *count = g_hash_table_lookup(counters, key);
    if (!count) {
        count = g_new0(uint64_t, 1);
        g_hash_table_insert(counters, g_strdup(key), count);
    }
    if (key_out) {
        gpointer stored = NULL;
        g_hash_table_lookup_extended(counters, key, &stored, NULL);
        *key_out = stored;
    }
    g_mutex_unlock(&lock);
    return count;
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        g_autofree char *disas = qemu_plugin_insn_disas(insn);
        const char *key = NULL;
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, counter_for(disas, &key), 1);
        if (per_pc) {
            PcCount *rec = g_new0(PcCount, 1);
            rec->vaddr = qemu_plugin_insn_vaddr(insn);
            rec->key = key;
            g_mutex_lock(&lock);
            g_ptr_array_add(pcs, rec);
            g_mutex_unlock(&lock);
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &rec->count, 1);
        }
    }
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
    g_autoptr(GString) out = g_string_new(NULL);
    GHashTableIter iter;
    gpointer key, value;
    uint64_t total = 0;

    g_mutex_lock(&lock);
    g_hash_table_iter_init(&iter, counters);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        uint64_t count = *(uint64_t *)value;
        if (count) {
            g_string_append_printf(out, "mix %" PRIu64 " %s\n", count, (const char *)key);
            total += count;
        }
    }
    for (guint i = 0; per_pc && i < pcs->len; i++) {
        PcCount *rec = g_ptr_array_index(pcs, i);
        if (rec->count >= min_count) {
            g_string_append_printf(out, "pc 0x%" PRIx64 " %" PRIu64 " %s\n", rec->vaddr, rec->count, rec->key);
        }
    }
    g_mutex_unlock(&lock);
    g_string_append_printf(out, "total %" PRIu64 "\n", total);
    qemu_plugin_outs(out->str);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (strcmp(info->target_name, "aarch64") != 0) {
        fprintf(stderr, "arm_mix_plugin: aarch64 only, not %s\n", info->target_name);
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        g_auto(GStrv) tokens = g_strsplit(argv[i], "=", 2);
        if (g_strcmp0(tokens[0], "pc") == 0) {
            if (!qemu_plugin_bool_parse(tokens[0], tokens[1], &per_pc)) {
                fprintf(stderr, "arm_mix_plugin: bad boolean: %s\n", argv[i]);
                return -1;
            }
        } else if (g_strcmp0(tokens[0], "min") == 0 && tokens[1]) {
            min_count = g_ascii_strtoull(tokens[1], NULL, 10);
        } else {
            fprintf(stderr, "arm_mix_plugin: unknown option %s (pc=on|off, min=N)\n", argv[i]);
            return -1;
        }
    }
    counters = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    pcs = g_ptr_array_new_with_free_func(g_free);
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
