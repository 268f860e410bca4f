/* Preloaded into tritonserver so that its admin key never appears in /proc/<pid>/cmdline.
 *
 * Triton reads the key only from its command line (--grpc-restricted-protocol=...:admin-key=KEY), and
 * every local user may read any process's command line. The server is therefore started with a
 * placeholder in those flags and the key in the environment variable DINO_ARGV_SECRET (a process's
 * environment is readable by its own user only). This constructor runs before main(): it points each
 * argv entry holding the placeholder at a heap copy with the key put in, so Triton parses the key
 * while the memory that /proc/<pid>/cmdline shows still holds the placeholder; then it blanks the
 * key in the environment block and removes the variable, so children (backend stubs) never get it.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

static const char PLACEHOLDER[] = "@DINO_ARGV_SECRET@";
static const char VARIABLE[] = "DINO_ARGV_SECRET=";

static char *with_secret(const char *arg, const char *secret) {
    const char *at = strstr(arg, PLACEHOLDER);
    size_t head = (size_t)(at - arg), tail = strlen(at + sizeof PLACEHOLDER - 1);
    char *out = malloc(head + strlen(secret) + tail + 1);
    if (out == NULL) abort();
    memcpy(out, arg, head);
    strcpy(out + head, secret);
    strcat(out, at + sizeof PLACEHOLDER - 1);
    return out;
}

static void reveal(int argc, char **argv, char **envp) {
    char *secret = NULL;
    for (char **env = envp; env != NULL && *env != NULL; env++) {
        if (strncmp(*env, VARIABLE, sizeof VARIABLE - 1) == 0) {
            secret = strdup(*env + sizeof VARIABLE - 1);
            if (secret == NULL) abort();
            memset(*env + sizeof VARIABLE - 1, 0, strlen(*env + sizeof VARIABLE - 1));
        }
    }
    if (secret == NULL) return;
    unsetenv("DINO_ARGV_SECRET");
    for (int i = 1; i < argc; i++) {
        if (strstr(argv[i], PLACEHOLDER) != NULL) argv[i] = with_secret(argv[i], secret);
    }
}

__attribute__((section(".init_array"), used)) static void (*const run_reveal)(int, char **, char **) = reveal;
