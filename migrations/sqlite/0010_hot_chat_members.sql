-- As on PostgreSQL: no index on a column every message changes (a user's chat list sorts
-- that user's rows, found through chat_members_pair).
DROP INDEX chat_members_user;
