/*
 * hrf native reward plugins: the C ABI, version 1.
 *
 * A native plugin is a shared library that exports two functions:
 *
 *   uint32_t hrf_reward_abi_version(void);          -- checked first: must return HRF_REWARD_ABI_VERSION
 *   const hrf_reward_plugin *hrf_reward_plugin_table(void); -- the plugin's table, valid while loaded
 *
 * The host checks the table's abi_version, table_size and sample_size against its own before
 * calling anything else, then calls create() once with the pipeline entry's `config:` as JSON,
 * score() on batches, and destroy() at the end. It never frees what the plugin returns.
 *
 * Native plugins run inside the host process with its rights: hrf loads one only when the
 * pipeline entry says `trust: native` AND the command line says `--allow-native`. Nothing may
 * unwind across these functions (a C++ or Rust plugin catches its exceptions/panics and returns
 * an error instead).
 */
#ifndef HRF_REWARD_H
#define HRF_REWARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HRF_REWARD_ABI_VERSION 1u

/* One generated sample. `data` holds width * height * channels bytes, interleaved row-major;
 * channels is 1 (grey) or 3 (RGB). `prompt` is NULL for unconditional samples. Every pointer is
 * valid only during the score() call. */
typedef struct hrf_sample {
    uint32_t width;
    uint32_t height;
    uint32_t channels;
    const uint8_t *data;
    const char *prompt;        /* UTF-8, NUL-terminated, or NULL */
    const char *metadata_json; /* UTF-8 JSON object, NUL-terminated */
} hrf_sample;

typedef struct hrf_reward_plugin {
    uint32_t abi_version; /* HRF_REWARD_ABI_VERSION */
    uint32_t table_size;  /* sizeof(hrf_reward_plugin) */
    uint32_t sample_size; /* sizeof(hrf_sample) */
    const char *name;     /* UTF-8, NUL-terminated */
    const char *version;
    int32_t higher_is_better; /* 1: larger scores are better */
    uint32_t batch_hint;      /* preferred batch size, 0: none */

    /* A new instance configured from `config_json`; NULL on failure (then last_error(NULL)
     * says why). */
    void *(*create)(const char *config_json);
    /* Writes n scores to `scores`; returns 0 on success, non-zero on failure (then
     * last_error(state) says why). */
    int32_t (*score)(void *state, const hrf_sample *samples, size_t n, float *scores);
    /* The last error of `state` (or of create when NULL), NUL-terminated; owned by the plugin,
     * valid until its next call. */
    const char *(*last_error)(void *state);
    void (*destroy)(void *state);
} hrf_reward_plugin;

uint32_t hrf_reward_abi_version(void);
const hrf_reward_plugin *hrf_reward_plugin_table(void);

#ifdef __cplusplus
}
#endif

#endif /* HRF_REWARD_H */
