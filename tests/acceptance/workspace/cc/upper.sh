#!/bin/sh
# Upper-cases stdin (a tool run through sh_binary).
tr 'a-f' 'A-F'
