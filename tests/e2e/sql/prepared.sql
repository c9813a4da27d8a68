-- SQL PREPARE / EXECUTE / DEALLOCATE and protocol-level prepared statements (--@prepare:
-- the next statement is sent as a named Parse/Bind/Execute by psycopg).
prepare p1 (int) as select $1 + 1;
execute p1(41);
prepare p1 as select 2;
select name, statement from pg_prepared_statements where from_sql order by name;
deallocate p1;
execute p1(1);
prepare p2 as select 'p2';
--@prepare
select 'proto1' as v;
--@prepare
select 'proto1' as v;
--@prepare
select 'proto2' as v, current_setting('search_path') as sp;
execute p2;
deallocate all;
execute p2;
--@prepare
select 'proto1' as v;
prepare p3 as select 'p3';
--@prepare
select 'proto3' as v;
discard all;
execute p3;
select count(*) from pg_prepared_statements where from_sql;
prepare p4 (text) as select $1 || '!';
begin;
execute p4('in-tx');
deallocate p4;
rollback;
execute p4('after-rollback');
--@extended
select 'extended-unnamed' as v;
deallocate prepare all;
execute p4('gone');
