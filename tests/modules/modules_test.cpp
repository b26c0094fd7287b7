// tests/modules/modules_test.cpp: two shared modules of one process (plugin_a, plugin_b, each
// linking nodemeta::nodemeta, dlopened with RTLD_NOW | RTLD_LOCAL as plugins and Python
// extensions are) must agree on what a key means, on the default store and on the intern
// table. With a static core each module has its own table and default store: a key interned
// in one is another key (or none) in the other, and these tests fail.
//
// Built twice: modules_test links nodemeta itself (the test is a third module that must
// agree); modules_dlopen_only_test does not, so libnodemeta is first loaded by dlopen, as
// when Python imports an extension.
#include <dlfcn.h>

#include <gtest/gtest.h>

#include <string>

#include "plugin_api.h"

#if NODEMETA_MODULES_TEST_LINKS_CORE
#include <nodemeta/nodemeta.h>
#endif

namespace {

class Module {
 public:
  Module(const char* path, const char* entry) {
    handle_ = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr) {
      error_ = std::string("dlopen(") + path + "): " + dlerror();
      return;
    }
    auto fn = reinterpret_cast<NodemetaTestPluginEntry>(dlsym(handle_, entry));
    if (fn == nullptr) {
      error_ = std::string("dlsym(") + entry + "): " + dlerror();
      return;
    }
    api_ = fn();
  }
  // Never dlclosed: the modules stay loaded for the life of the process, as plugins do.
  const NodemetaTestPlugin* operator->() const { return api_; }
  const std::string& error() const { return error_; }

 private:
  void* handle_ = nullptr;
  const NodemetaTestPlugin* api_ = nullptr;
  std::string error_;
};

class ModulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(a_.error().empty()) << a_.error();
    ASSERT_TRUE(b_.error().empty()) << b_.error();
  }

  // A MetadataStore to hand to the modules: the test's own where it links nodemeta, one
  // made by plugin_a where it does not.
  void* store() {
#if NODEMETA_MODULES_TEST_LINKS_CORE
    return &store_;
#else
    if (store_ == nullptr) store_ = a_->create_store();
    return store_;
#endif
  }
  void TearDown() override {
#if !NODEMETA_MODULES_TEST_LINKS_CORE
    if (store_ != nullptr) a_->destroy_store(store_);
#endif
  }

  static std::string name_in(const Module& m, std::uint32_t id) {
    char name[64];
    return m->name_of(id, name) ? std::string(name) : "<no key " + std::to_string(id) + " in " + m->name + ">";
  }

  Module a_{NODEMETA_PLUGIN_A, "plugin_a_api"};
  Module b_{NODEMETA_PLUGIN_B, "plugin_b_api"};
#if NODEMETA_MODULES_TEST_LINKS_CORE
  nodemeta::MetadataStore store_;
#else
  void* store_ = nullptr;
#endif
};

TEST_F(ModulesTest, KeyInternedInOneModuleIsTheSameKeyInAnother) {
  // plugin_a interns a name of its own first, so that separate per-module tables would give
  // the next fresh name different ids in the two modules.
  void* node = a_->create_node(store(), "modules_test.alpha");
  const std::uint32_t beta_in_b = b_->set(node, "modules_test.beta", 42);
  const NodemetaTestKeyInfo beta_in_a = a_->get(node, "modules_test.beta");
  EXPECT_EQ(beta_in_a.id, beta_in_b) << "plugin_a and plugin_b intern 'modules_test.beta' to different ids";
  EXPECT_STREQ(beta_in_a.name, "modules_test.beta");
  EXPECT_EQ(name_in(a_, beta_in_b), "modules_test.beta") << "plugin_b's key, as plugin_a names it";
  EXPECT_TRUE(beta_in_a.found) << "plugin_a does not see the value plugin_b set";
  EXPECT_EQ(beta_in_a.value, 42);
  // plugin_b's write did not land on another of plugin_a's keys.
  const NodemetaTestKeyInfo alpha_in_a = a_->get(node, "modules_test.alpha");
  EXPECT_TRUE(alpha_in_a.found);
  EXPECT_EQ(alpha_in_a.value, 1) << "plugin_b's 'modules_test.beta' overwrote plugin_a's 'modules_test.alpha'";
  EXPECT_EQ(b_->get(node, "modules_test.alpha").id, alpha_in_a.id);
#if NODEMETA_MODULES_TEST_LINKS_CORE
  const nodemeta::Key beta("modules_test.beta");
  EXPECT_EQ(beta.id(), beta_in_b) << "the test and plugin_b intern 'modules_test.beta' to different ids";
  const auto value = static_cast<nodemeta::NodeMetadata*>(node)->get(beta);
  ASSERT_TRUE(value.has_value()) << "the test does not see the value plugin_b set";
  EXPECT_EQ(value->as<std::int64_t>(), 42);
#endif
  a_->destroy_node(node);
}

TEST_F(ModulesTest, DefaultStoreIsOneObject) {
  EXPECT_EQ(a_->default_store(), b_->default_store());
#if NODEMETA_MODULES_TEST_LINKS_CORE
  EXPECT_EQ(a_->default_store(), &nodemeta::MetadataStore::default_store());
#endif
  // A standalone node made in plugin_a lives in the default store plugin_b sees, and a key
  // plugin_b sets on it is read back by plugin_a.
  void* node = a_->create_node(nullptr, "modules_test.default_alpha");
  EXPECT_EQ(b_->node_store(node), b_->default_store());
  const std::uint32_t id = b_->set(node, "modules_test.default_beta", 7);
  const NodemetaTestKeyInfo in_a = a_->get(node, "modules_test.default_beta");
  EXPECT_EQ(in_a.id, id);
  EXPECT_TRUE(in_a.found);
  EXPECT_EQ(in_a.value, 7);
  a_->destroy_node(node);
}

TEST_F(ModulesTest, InternedCountAgrees) {
  const std::size_t before = a_->interned_count();
  EXPECT_EQ(b_->interned_count(), before);
#if NODEMETA_MODULES_TEST_LINKS_CORE
  EXPECT_EQ(nodemeta::Key::interned_count(), before);
#endif
  // A fresh name interned in plugin_b is counted, and known by the same id, in plugin_a.
  const std::uint32_t id = b_->intern("modules_test.count_gamma");
  EXPECT_EQ(b_->interned_count(), before + 1);
  EXPECT_EQ(a_->interned_count(), before + 1);
  EXPECT_EQ(a_->intern("modules_test.count_gamma"), id);
  EXPECT_EQ(a_->interned_count(), before + 1);
  EXPECT_EQ(name_in(a_, id), "modules_test.count_gamma");
}

}  // namespace
