// nodemeta/nodemeta.h: the umbrella header.
//
//   #include <nodemeta/nodemeta.h>
//   nodemeta::MetadataStore store;
//   nodemeta::NodeMetadata node = store.create({{"val", 3}, {"stack_trace", "..."}});
//   node.set("flops", 1024);          // fine
//   node.set("val", 4);               // throws ProtectedKeyError
#ifndef NODEMETA_NODEMETA_H_
#define NODEMETA_NODEMETA_H_

#include "nodemeta/errors.h"
#include "nodemeta/key.h"
#include "nodemeta/metadata_store.h"
#include "nodemeta/node_metadata.h"
#include "nodemeta/value.h"

#endif  // NODEMETA_NODEMETA_H_
