/* Fuzzes the CIFAR binary reader: CIFAR-10 records (1 label byte) and CIFAR-100 (2, both indices),
 * plain or gzip'd. */
#include "fuzz_input.h"

#include "ballast/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    static const int modes[3][2] = {{1, 0}, {2, 0}, {2, 1}};
    for (int m = 0; m < 3; m++) {
        bl_dataset ds;
        if (bl_read_cifar(path, modes[m][0], modes[m][1], &ds) == 0) bl_dataset_free(&ds);
        bl_clear_error();
    }
    return 0;
}
