-- Every message updates both members' rows (unread count, last activity). With
-- `last_activity_at` in an index, each of those updates wrote new index entries and left a dead
-- row that only vacuum could clear (at 1,000 messages a second, 100,000 dead rows in a
-- minute slowed every lookup of a chat). Without it no index covers a column a message
-- changes, so PostgreSQL updates the rows in place (HOT) when their page has room: half of
-- each page is kept free for that. A user's chat list sorts that user's rows (tens) instead.
DROP INDEX chat_members_user;
ALTER TABLE chat_members SET (fillfactor = 50);
