/*
 * Test fixture: a native reward plugin whose ABI version and struct sizes are right but which
 * misbehaves otherwise, for host/hrf-plugins/tests/native.rs (which builds it with cc):
 *   -DHRF_TEST_NULL_FUNCTIONS   the table holds NULL for `create` and `score`;
 *   -DHRF_TEST_LONG_NAME        the table's name is 1 MiB of text with control characters.
 * Config: {"fail_create": true} makes create fail, {"fail_score": true} makes score fail; either
 * way last_error returns NULL, or "" with {"empty_reason": true}.
 */
#include <stdlib.h>
#include <string.h>

#include "hrf_reward.h"

typedef struct {
    int fail_score;
    int empty_reason;
} state_t;

static int create_empty_reason;

static void *create(const char *config_json) {
    create_empty_reason = strstr(config_json, "\"empty_reason\"") != NULL;
    if (strstr(config_json, "\"fail_create\"")) return NULL;
    state_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->fail_score = strstr(config_json, "\"fail_score\"") != NULL;
    s->empty_reason = create_empty_reason;
    return s;
}

static int32_t score(void *state, const hrf_sample *samples, size_t n, float *scores) {
    state_t *s = state;
    (void)samples;
    if (s->fail_score) return 7;
    for (size_t i = 0; i < n; i++) scores[i] = 0.5f;
    return 0;
}

static const char *last_error(void *state) {
    int empty = state ? ((state_t *)state)->empty_reason : create_empty_reason;
    return empty ? "" : NULL;
}

static void destroy(void *state) { free(state); }

#ifdef HRF_TEST_LONG_NAME
static char long_name[1 << 20];
#endif

static hrf_reward_plugin PLUGIN = {
    .abi_version = HRF_REWARD_ABI_VERSION,
    .table_size = sizeof(hrf_reward_plugin),
    .sample_size = sizeof(hrf_sample),
    .name = "hostile",
    .version = "1.0.0",
    .higher_is_better = 1,
    .batch_hint = 0,
#ifdef HRF_TEST_NULL_FUNCTIONS
    .create = NULL,
    .score = NULL,
#else
    .create = create,
    .score = score,
#endif
    .last_error = last_error,
    .destroy = destroy,
};

uint32_t hrf_reward_abi_version(void) { return HRF_REWARD_ABI_VERSION; }

const hrf_reward_plugin *hrf_reward_plugin_table(void) {
#ifdef HRF_TEST_LONG_NAME
    memset(long_name, 'n', sizeof long_name - 1);
    memcpy(long_name, "\x1b[2J\r\n", 6);
    long_name[sizeof long_name - 1] = 0;
    PLUGIN.name = long_name;
#endif
    return &PLUGIN;
}
