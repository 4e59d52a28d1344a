#!/usr/bin/perl
# Line-protocol front end to Perl Mail::SRS (Guarded, the class `new Mail::SRS` builds), for the interop
# tests in test/interop/. One process serves many requests; test/helpers/peers.ts drives it.
#
# Request, one line, fields separated by TAB:
#   op        "forward" or "reverse"
#   now       Unix seconds that Mail::SRS's time() returns for this request
#   secrets   hex of each secret (raw bytes), joined by ","; the first signs, all verify
#   separator "=", "+" or "-"
#   hashlen   HashLength
#   hashmin   HashMin
#   maxage    MaxAge (days); note Mail::SRS turns 0 into its default 21
#   alias     hex of the alias (SRS) domain
#   address   hex of the address (raw bytes)
# Reply, one line: "OK" TAB hex(result) TAB hex(warnings)   or   "ERR" TAB hex(error) TAB hex(warnings)
#
# Everything stays a byte string (hex in, hex out, no decoding): Mail::SRS then lowercases with Perl's
# byte semantics (ASCII A-Z only), which is what libsrs2 does. Character strings would get Unicode lc
# and a different hash (docs/wire-formats.md: the hashed text is lower-cased).
use strict;
use warnings;

our $NOW;
# Mail::SRS calls the builtin time() in timestamp_create and timestamp_check. An override of
# CORE::GLOBAL::time is seen by code compiled after it is installed, so install it before loading.
BEGIN {
	no warnings 'once';
	*CORE::GLOBAL::time = sub () { defined $main::NOW ? $main::NOW : CORE::time() };
}
require Mail::SRS;

binmode STDIN;
binmode STDOUT;
$| = 1;

sub unhex { my ($h) = @_; return pack('H*', $h // ''); }
sub tohex { my ($s) = @_; return unpack('H*', $s // ''); }

print "READY\t", tohex($Mail::SRS::VERSION), "\t\n";

while (my $line = <STDIN>) {
	$line =~ s/\r?\n\z//;
	next if $line eq '';
	my ($op, $now, $secrets, $sep, $hashlen, $hashmin, $maxage, $alias, $address) = split(/\t/, $line, -1);
	my @warnings;
	local $SIG{__WARN__} = sub { push @warnings, join('', @_) };
	local $NOW = $now;
	my $result = eval {
		my $srs = Mail::SRS->new(
			Secret     => [ map { unhex($_) } split(/,/, $secrets, -1) ],
			Separator  => $sep,
			HashLength => $hashlen,
			HashMin    => $hashmin,
			MaxAge     => $maxage,
		);
		my $addr = unhex($address);
		if ($op eq 'forward') { $srs->forward($addr, unhex($alias)) }
		elsif ($op eq 'reverse') { $srs->reverse($addr) }
		else { die "unknown op '$op'\n" }
	};
	my $warn = join('', @warnings);
	if (defined $result && !$@) {
		print "OK\t", tohex($result), "\t", tohex($warn), "\n";
	} else {
		my $err = $@ || 'undefined result';
		$err =~ s/\s+\z//;
		print "ERR\t", tohex($err), "\t", tohex($warn), "\n";
	}
}
