// The session-kind table (src/service/server/session_kind.hpp) against the
// proto: every open message of ClientMessage.kind has exactly one entry,
// under its own field, and a command or an empty message has none.
#include <session_kind.hpp>

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace conduit::service {
namespace {

TEST(SessionKinds, EveryOpenMessageOfTheProtoHasOneEntry) {
  const auto* oneof = v1::ClientMessage::descriptor()->FindOneofByName("kind");
  ASSERT_NE(oneof, nullptr);
  std::set<std::string> names;
  std::size_t opens = 0;
  for (int i = 0; i < oneof->field_count(); ++i) {
    const auto* field = oneof->field(i);
    if (field->name() == "command") continue;
    ++opens;
    std::size_t entries = 0;
    for (const SessionKind* kind : session_kinds()) {
      if (kind->open_case != field->number()) continue;
      ++entries;
      EXPECT_EQ(kind->open_field, field->name());
      EXPECT_TRUE(names.insert(kind->name).second) << kind->name << " is the name of two kinds";
      EXPECT_GT(kind->descriptors_to_open, 0u) << kind->name;
    }
    EXPECT_EQ(entries, 1u) << field->name() << " has " << entries << " entries in session_kinds()";
  }
  EXPECT_EQ(session_kinds().size(), opens);
}

TEST(SessionKinds, CommandsAndEmptyMessagesOpenNothing) {
  v1::ClientMessage message;
  EXPECT_EQ(session_kind_of(message), nullptr);
  message.mutable_command()->mutable_close();
  EXPECT_EQ(session_kind_of(message), nullptr);
  message.mutable_open_proxy();
  ASSERT_NE(session_kind_of(message), nullptr);
  EXPECT_STREQ(session_kind_of(message)->name, "proxy");
  EXPECT_TRUE(session_kind_of(message)->controllable);
}

}  // namespace
}  // namespace conduit::service
