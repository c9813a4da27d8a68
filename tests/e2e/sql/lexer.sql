-- Statements a byte-level guess gets wrong (simple protocol: one Query per line).
select 'temp' as temp, 'listen' as listen, 'load' as load;
select 1 as "temp"; set work_mem = '6MB';
select $$it's; set work_mem = '1MB'$$ as dollar; set search_path = after_dollar;
select $tag$ a ' b $tag$ as tagged; set timezone = 'Asia/Kolkata';
select E'it\'s' as esc; set datestyle = 'SQL, DMY';
/* a comment with a ' quote */ set application_name = 'after-comment';
select 'c' as c -- a line comment with a ' quote
; set statement_timeout = '8s';
select 'a;b' as semi; set extra_float_digits = 2;
SeT   "search_path"   =   'MixedCase', public;
select set_config('TimeZone', 'Europe/Oslo', false) as sc;
select 1 as one; reset time zone;
select set_config('work_mem', '12MB', false), 'x' as x; select 'y';
select current_setting('work_mem') as wm, 'temp table' as note;
